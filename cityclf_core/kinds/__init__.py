"""Head kinds: what a head's outputs mean, in one place per kind.

A head file says its kind in its config sidecar (`"arch": "score"` or
`"class"`, the released files' key). Everything that depends on it -- the
activation, what the head's score is, its label, how results are written,
stored and tagged, its training loss and metrics, the checks on its file --
is asked of the kind, never decided by a branch elsewhere::

    from cityclf_core.kinds import get_kind
    kind = get_kind(head.config.arch)

Adding a kind is one module with a `HeadKind` subclass and one
`register_kind(...)` call (see score.py and classes.py).
"""

from __future__ import annotations

from .base import HeadKind, ReviewItem, TrainingTargets
from .classes import ClassKind
from .popularity import PopularityAttentionKind, PopularityKind, PopularityMultiKind
from .registry import (
    get_kind,
    kind_choices,
    kind_for_outputs,
    kind_names,
    register_kind,
    result_from_dict,
    unregister_kind,
)
from .score import ScoreKind

# the built-in kinds
register_kind(ScoreKind())
register_kind(ClassKind())
for _kind in (PopularityKind(), PopularityMultiKind(), PopularityAttentionKind()):
    register_kind(_kind)

__all__ = ["ClassKind", "HeadKind", "ReviewItem", "ScoreKind", "TrainingTargets", "get_kind", "kind_choices",
           "kind_for_outputs", "kind_names", "register_kind", "result_from_dict", "unregister_kind"]
