"""`HeadResult`: one head's verdict on one image. What its numbers mean is its kind's, carried as an object.
`resolve_head_name`: a head named in a selection, among the heads of a set of results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass
class HeadResult:
    """One head's outputs for one image, reduced over the image's views."""

    head: str
    kind: Any  # the head's kind (a kinds.HeadKind): what the numbers mean
    labels: list[str]  # one name per output
    values: list[float]  # per output, reduced over the views
    positive: float  # the head's one number: a score head's score, a classifier's P(not class 0)
    views: int

    @property
    def arch(self) -> str:
        """The head's kind, by name."""
        return self.kind.name

    @property
    def score(self) -> float:
        """The head's one number (what selections, gates and sorting use)."""
        return self.positive

    @property
    def label(self) -> str:
        return self.kind.label(self)

    @property
    def probs(self) -> dict[str, float] | None:
        return self.kind.probs(self)

    def value_of(self, label: str | None) -> float:
        """The reduced value of output `label` (a name, or an index as text); None: the score."""
        return self.kind.value_of(self, label)

    def to_dict(self) -> dict:
        return self.kind.to_dict(self)

    def summary(self) -> str:
        return self.kind.summary(self)


def resolve_head_name(names: list[str], head: str | None) -> str:
    """`head` as given, or the one name it starts (case-insensitively); None or '' gives the first."""
    if not head:
        return names[0]
    if head in names:
        return head
    matches = [n for n in names if n.lower().startswith(head.lower())]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(f"no head {head!r}; the heads are: {', '.join(names)}")


__all__ = ["HeadResult", "resolve_head_name"]
