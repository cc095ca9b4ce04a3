"""Tags from scores, for caption files: rules, and idempotent sidecar updates.

A classifier contributes a tag for each non-pass class whose probability reaches
its threshold (0.5 unless set per head); a score head can contribute a score
bucket such as `aesthetic_70` (decile) or `aesthetic_72` (percent). Tag names
default to curated names for the releases (`jpeg_artifacts`, ...) and the
lower-cased label otherwise, and can be renamed per head or per class.

Sidecars (`image.txt` beside `image.png`) are updated, never clobbered: tags
these rules could have produced are replaced, every other word of the file is
kept as it was, and a rerun with the same results leaves the file unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ConfigError
from .scoring.results import HeadResult
from .numbers import THRESHOLD
from .sidecars import merge_caption, sidecar_path, write_sidecar  # noqa: F401  (moved; re-exported)

BUCKETS = ("none", "decile", "percent")

#: Curated tag names for the released heads (config name -> label -> tag); score heads map "" -> prefix.
DEFAULT_TAGS = {
    "CityAesthetics-Anime": {"": "aesthetic"},
    "CCAnime-ChromaticAberration": {"Chromatic Aberration": "chromatic_aberration"},
    "CCAnime-Compression": {"JPEG": "jpeg_artifacts", "WEBP": "webp_artifacts"},
}


def parse_mapping(text: str, what: str) -> dict[str, str]:
    """'key = value' entries, one per line or separated by ';'. Keys may contain ':' (head:Label)."""
    out: dict[str, str] = {}
    for raw in re.split(r"[;\n]", text or ""):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        if "=" not in entry:
            raise ConfigError(f"{what}: {entry!r} is not of the form 'name = value'")
        key, value = entry.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def parse_thresholds(text: str) -> dict[str, float]:
    """'0.6' (every head) or 'HeadName = 0.7; * = 0.5'."""
    text = (text or "").strip()
    if not text:
        return {}
    number, why = THRESHOLD.problem(text)
    if why is None:
        return {"*": number}
    if "=" not in text:
        raise ConfigError(f"thresholds {text!r}: {why}")
    out = {}
    for key, value in parse_mapping(text, "thresholds").items():
        out[key], why = THRESHOLD.problem(value)
        if why:
            raise ConfigError(f"thresholds: {key} = {value!r} is not a number ({why})")
    return out


def slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.strip().lower()).strip("_")


def _base_name(head: str) -> str:
    """'CCAnime-Compression-v1.5' -> 'CCAnime-Compression' (a trailing -vN or -vN.M dropped)."""
    return re.sub(r"-v\d+(\.\d+)*(#\d+)?$", "", head)


@dataclass
class TagRules:
    names: dict[str, str] = field(default_factory=dict)  # "head" / "head:Label" -> tag ("" = never)
    thresholds: dict[str, float] = field(default_factory=dict)  # "head" or "*" -> threshold
    bucket: str = "none"

    def __post_init__(self):
        if self.bucket not in BUCKETS:
            raise ConfigError(f"unknown score bucket {self.bucket!r}; choose one of {', '.join(BUCKETS)}")

    @classmethod
    def from_text(cls, names: str = "", thresholds: str = "", bucket: str = "none") -> "TagRules":
        return cls(parse_mapping(names, "tag names"), parse_thresholds(thresholds), bucket)

    @staticmethod
    def _lookup(table: dict, head: str, label: str | None = None):
        """table[key] for the head's full name, then its name without the version suffix."""
        for h in (head, _base_name(head)):
            key = h if label is None else f"{h}:{label}"
            if key in table:
                return table[key]
        return None

    def tag_name(self, head: str, label: str | None) -> str:
        """The tag for a class (label) of `head`, or for a score head's bucket prefix (label None)."""
        named = self._lookup(self.names, head, label)
        if named is not None:
            return named
        base = _base_name(head)
        default = DEFAULT_TAGS.get(base, {}).get("" if label is None else label)
        return default or slug(base if label is None else label)

    def threshold(self, head: str) -> float:
        value = self._lookup(self.thresholds, head)
        return value if value is not None else self.thresholds.get("*", 0.5)

    def tags_for(self, result: dict[str, HeadResult]) -> list[str]:
        """The tags these rules give one image's results, each head's as its kind makes them."""
        tags: list[str] = []
        for head, r in result.items():
            tags += [t for t in r.kind.tags(head, r, self) if t not in tags]
        return tags

    def vocabulary(self, results: list[dict[str, HeadResult]]) -> tuple[set[str], list[re.Pattern]]:
        """Every tag these rules can produce for these heads (to recognise our own tags in a file)."""
        words: set[str] = set()
        patterns: list[re.Pattern] = []
        for result in results[:1]:
            for head, r in result.items():
                more, pats = r.kind.tag_vocabulary(head, r, self)
                words |= more
                patterns += pats
        words.discard("")
        return words, patterns


def owner(rules: TagRules, results: list[dict[str, HeadResult]]):
    words, patterns = rules.vocabulary(results)
    return lambda tag: tag in words or any(p.match(tag) for p in patterns)


__all__ = [
    "BUCKETS",
    "DEFAULT_TAGS",
    "TagRules",
    "merge_caption",
    "owner",
    "parse_mapping",
    "parse_thresholds",
    "sidecar_path",
    "write_sidecar",
]
