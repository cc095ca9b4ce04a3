"""The rows a store hands out: plain frozen dataclasses, the same for every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True)
class EncoderRow:
    id: int
    identity: str
    name: str
    source: str
    image_size: int
    embed_dim: int


@dataclass(frozen=True)
class FileRow:
    path: str
    size: int | None
    mtime_ns: int | None
    content: str | None
    status: str
    error: str | None


class StoredScore(NamedTuple):
    """A head's stored result for one file: score, label, the kind's extra (e.g. class probabilities), its kind."""

    score: float
    label: str
    extra: dict | None
    kind: str


@dataclass(frozen=True)
class PolicyInfo:
    """One set of stored embeddings: a CLIP, a crop policy, how many files' worth."""

    encoder: EncoderRow
    policy: str
    count: int


@dataclass
class PruneReport:
    """What `prune` forgot: the files gone from disk, and the embeddings and scores only they had."""

    files: list[str] = field(default_factory=list)
    embeddings: int = 0
    scores: int = 0
    kept_shared: int = 0  # contents whose embeddings another path still uses
