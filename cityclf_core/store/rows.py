"""The rows a store hands out: plain frozen dataclasses, the same for every backend."""

from __future__ import annotations

from dataclasses import dataclass
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
