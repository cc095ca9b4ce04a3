"""The rating heads' network (rating.py): the published `layers` on the L2-normalised embedding."""

from __future__ import annotations

import torch
from torch import nn


class RatingNet(nn.Module):
    """`layers` (the published layout) on the L2-normalised embedding."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The raw rating [n, 1] of [n, F] embeddings (normalised here: a zero vector stays zero)."""
        return self.layers(nn.functional.normalize(x, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


__all__ = ["RatingNet"]
