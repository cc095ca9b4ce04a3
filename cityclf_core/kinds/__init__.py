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
`register_kind(...)` call (see score.py and classes.py). A kind imports torch
only in the methods that build, run or train its network (the networks live in
released.py, rating_nets.py, popularity_nets.py): listing the kinds and
reading stored results load no torch.
"""

from __future__ import annotations

from .base import HeadKind, ReviewItem, TrainingTargets
from .classes import ClassKind
from .laion_aesthetic import LaionAestheticKind
from .popularity import PopularityAttentionKind, PopularityKind, PopularityMultiKind
from .registry import (
    get_kind,
    kind_choices,
    kind_for_layout,
    kind_for_outputs,
    kind_names,
    layout_hints,
    register_kind,
    result_from_dict,
    unregister_kind,
)
from .score import ScoreKind
from .waifu_scorer import WaifuScorerKind

# the built-in kinds
register_kind(ScoreKind())
register_kind(ClassKind())
for _kind in (PopularityKind(), PopularityMultiKind(), PopularityAttentionKind()):
    register_kind(_kind)
register_kind(LaionAestheticKind())
register_kind(WaifuScorerKind())

__all__ = ["ClassKind", "HeadKind", "LaionAestheticKind", "ReviewItem", "ScoreKind", "TrainingTargets",
           "WaifuScorerKind", "get_kind", "kind_choices", "kind_for_layout", "kind_for_outputs", "kind_names",
           "layout_hints", "register_kind", "result_from_dict", "unregister_kind"]
