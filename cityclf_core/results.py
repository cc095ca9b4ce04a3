"""`HeadResult`: one head's verdict on one image. What its numbers mean is its kind's (kinds/)."""

from __future__ import annotations

from dataclasses import dataclass

from .kinds import HeadKind, get_kind


@dataclass
class HeadResult:
    """One head's outputs for one image, reduced over the image's views."""

    head: str
    arch: str  # the head's kind, by name
    labels: list[str]  # one name per output
    values: list[float]  # per output, reduced over the views
    positive: float  # the head's one number: a score head's score, a classifier's P(not class 0)
    views: int

    @property
    def kind(self) -> HeadKind:
        return get_kind(self.arch)

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

    @classmethod
    def from_dict(cls, head: str, d: dict) -> "HeadResult":
        """The inverse of to_dict (e.g. a node reading Predict's JSON output), as the head's kind rebuilds it."""
        result = get_kind(d["arch"]).from_dict(head, d)
        result.views = d.get("views", 0)
        return result

    def summary(self) -> str:
        return self.kind.summary(self)


__all__ = ["HeadResult"]
