"""Names and small helpers shared by the nodes."""

from __future__ import annotations

CATEGORY = "CityClassifiers"
MODEL_TYPE = "CITYCLF_MODEL"
TILING_CHOICES = ["auto", "on", "off"]


def first(value, default=None):
    """A widget value from a node with INPUT_IS_LIST (ComfyUI hands every input as a list)."""
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value
