"""Names and small helpers shared by the nodes."""

from __future__ import annotations

from typing import NamedTuple

CATEGORY = "CityClassifiers"
MODEL_TYPE = "CITYCLF_MODEL"
TILING_CHOICES = ["auto", "on", "off"]


def first(value, default=None):
    """A widget value from a node with INPUT_IS_LIST (ComfyUI hands every input as a list)."""
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


class Output(NamedTuple):
    """One output of a node: its ComfyUI type, name, whether it is a list, and its tooltip."""

    type: str
    name: str
    is_list: bool
    tooltip: str


def declare_outputs(outputs: list[Output]) -> tuple[tuple, tuple, tuple, tuple]:
    """RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS from one list of outputs,
    so the four can never disagree:

        OUTPUTS = [Output("FLOAT", "score", True, "One score per image.")]
        RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS = declare_outputs(OUTPUTS)
    """
    outputs = [Output(*o) for o in outputs]
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise ValueError(f"output names repeat: {names}")
    if not all(o.tooltip for o in outputs):
        raise ValueError(f"every output needs a tooltip: {names}")
    return (tuple(o.type for o in outputs), tuple(names), tuple(o.is_list for o in outputs),
            tuple(o.tooltip for o in outputs))
