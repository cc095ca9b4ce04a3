"""Head kinds: what a head's outputs mean, in one place per kind.

A head file says its kind in its config sidecar (`"arch": "score"` or
`"class"`, the released files' key); a file without one is known by its
layout (`kind_for_layout`: LAION's aesthetic predictor, waifu-scorer; else the
released layout, a score head with 1 output and a classifier with more). Everything that depends on it -- the
activation, what the head's score is, its label, how results are written,
stored and tagged, its training loss and metrics, the checks on its file --
is asked of the kind, never decided by a branch elsewhere::

    from cityclf_core.kinds import get_kind
    kind = get_kind(head.config.arch)

Adding a kind is one module with a `HeadKind` subclass and one
`register_kind(...)` call (see score.py and classes.py).
"""

from __future__ import annotations

from ..errors import WeightsError
from .base import HeadKind, TrainingTargets

_KINDS: dict[str, HeadKind] = {}


def register_kind(kind: HeadKind, replace: bool = False) -> HeadKind:
    """Make `kind` known by its name (the config's "arch"); returns it."""
    if kind.name in _KINDS and not replace and _KINDS[kind.name] is not kind:
        raise ValueError(f"a head kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    _KINDS.pop(name, None)


def get_kind(name: str) -> HeadKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise WeightsError(f"unknown head kind (arch) {name!r}; known kinds: {kind_choices()}") from None


def kind_names() -> list[str]:
    return list(_KINDS)


def kind_choices() -> str:
    """The registered kinds for a message: "'score' or 'class'", then kinds trained elsewhere in brackets."""
    names = [repr(n) for n, k in _KINDS.items() if k.trains_from_folders]
    others = [repr(n) for n, k in _KINDS.items() if not k.trains_from_folders]
    text = " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]
    return text + (f" (other kinds: {', '.join(others)})" if others else "")


def kind_for_layout(state_dict: dict) -> HeadKind | None:
    """The kind whose own layout a config-less file has (None: the released layout, or none known)."""
    return next((k for k in _KINDS.values() if k.recognises(state_dict)), None)


def layout_hints() -> list[str]:
    """What each known layout looks like, for the message about a file of none of them."""
    return [k.layout_hint for k in _KINDS.values() if k.layout_hint]


def kind_for_outputs(outputs: int) -> HeadKind:
    """The kind of a released-layout head known only by its weights: 1 output a score, more a classifier."""
    return get_kind("score" if outputs == 1 else "class")


from .classes import ClassKind  # noqa: E402  (the built-in kinds)
from .laion_aesthetic import LaionAestheticKind  # noqa: E402
from .popularity import PopularityAttentionKind, PopularityKind, PopularityMultiKind  # noqa: E402
from .score import ScoreKind  # noqa: E402
from .waifu_scorer import WaifuScorerKind  # noqa: E402

register_kind(ScoreKind())
register_kind(ClassKind())
for _kind in (PopularityKind(), PopularityMultiKind(), PopularityAttentionKind()):
    register_kind(_kind)
register_kind(LaionAestheticKind())
register_kind(WaifuScorerKind())

__all__ = ["ClassKind", "HeadKind", "LaionAestheticKind", "ScoreKind", "TrainingTargets", "WaifuScorerKind",
           "get_kind", "kind_choices", "kind_for_layout", "kind_for_outputs", "kind_names", "layout_hints",
           "register_kind", "unregister_kind"]
