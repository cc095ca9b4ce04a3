"""What a popularity head's outputs are (popularity.py, popularity_nets.py): their names, and where the sanity and
AI classes lie among them. A leaf: listing and reading results use these without the networks' torch."""

from __future__ import annotations

OUTPUT_NAMES = ("popularity", "sanity:general", "sanity:sensitive", "sanity:explicit", "ai:human", "ai:ai")
SANITY = slice(1, 4)
AI = slice(4, 6)

__all__ = ["AI", "OUTPUT_NAMES", "SANITY"]
