"""The `illusts` table read back as numpy columns: one record per work (its first page) with known counts.

The AI rule is the document's: AI when `illust_ai_type = 2` or the tags contain
`AIイラスト`, `Diffusion`, `Novel` or `midjourney` (its SQL uses LIKE, which
SQLite compares case-insensitively for ASCII, and so does this) -- plus
`AI生成` and the English names Pixiv gives those tags, which is what
gallery-dl's `tags: translated` writes: "AI-generated", "AI generated",
"AI illustration".
`illust_ai_type` means 0 unset (before Pixiv added the flag), 1 declared not
AI, 2 declared AI (the document's table of meanings is wrong; its rule is not).
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .ingest import database_path
from .sidecar import SidecarError, parse_time

AI_TAGS = ("AIイラスト", "Diffusion", "Novel", "midjourney",  # the document's
           "AI生成", "AI-generated", "AI generated", "AI illustration")  # Pixiv's other and English names
SANITY_LEVELS = (2, 4, 6)  # general, sensitive, explicit: class 0, 1, 2 of the sanity output
PAGE_NAME = re.compile(r"^(\d+)_p(\d+)$")


def is_ai(illust_ai_type, tags: str | None) -> bool:
    text = (tags or "").lower()
    return illust_ai_type == 2 or any(t.lower() in text for t in AI_TAGS)


@dataclass
class Records:
    filename: np.ndarray  # str
    image: np.ndarray  # absolute path or None
    illust_id: np.ndarray  # int64
    user_id: np.ndarray  # int64, -1 unknown
    bookmarks: np.ndarray  # float64
    views: np.ndarray  # float64
    sanity: np.ndarray  # int64: 2, 4, 6 (0 unknown)
    ai: np.ndarray  # bool, the document's rule
    tags_count: np.ndarray  # int64
    page_count: np.ndarray  # int64
    uploaded: np.ndarray  # float64 seconds since 1970 UTC, nan unknown
    crawled: np.ndarray  # float64 seconds since 1970 UTC, nan unknown

    def __len__(self) -> int:
        return len(self.filename)

    def subset(self, idx) -> "Records":
        return Records(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @property
    def age_days(self) -> np.ndarray:
        """Crawl time - upload time, in days (nan when either is unknown); never 'today'."""
        return (self.crawled - self.uploaded) / 86400.0

    @property
    def sanity_class(self) -> np.ndarray:
        """2/4/6 -> 0/1/2 (unknown -> 0)."""
        return np.searchsorted(np.array(SANITY_LEVELS), np.clip(self.sanity, 2, 6))


def _time(text, where) -> float:
    try:
        t = parse_time(text, where)
    except SidecarError:
        return float("nan")
    return float("nan") if t is None else t.timestamp()


def load_records(dataset: str | os.PathLike, db_path: str | os.PathLike | None = None,
                 require_images: bool = True) -> tuple[Records, list[tuple[str, str]]]:
    """The usable works of a dataset's metadata database, and (filename, why) for every row left out."""
    dataset = Path(dataset)
    path = Path(db_path) if db_path else database_path(dataset)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run `cityclf pixiv ingest {dataset}` first")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        have = {r[1] for r in db.execute("PRAGMA table_info(illusts)")}
        if "total_view" not in have:
            raise ConfigError(f"{path}: table illusts has no total_view column (the document's schema typo); "
                              f"run `cityclf pixiv ingest {dataset}` to add it from the sidecars")
        cols = ["filename", "image", "illust_id", "page", "user_id", "total_bookmarks", "total_view",
                "sanity_level", "illust_ai_type", "tags", "page_count", "date", "crawled"]
        select = ", ".join(c if c in have else "NULL" for c in cols)
        rows = db.execute(f"SELECT {select} FROM illusts ORDER BY filename").fetchall()
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{path} cannot be read ({e})") from None
    finally:
        db.close()
    left_out: list[tuple[str, str]] = []
    first: dict[int, tuple] = {}
    for r in rows:
        (filename, image, illust_id, page, user_id, bookmarks, views, sanity, ai_type, tags, page_count,
         date, crawled) = r
        m = PAGE_NAME.match(filename or "")
        if illust_id is None and m:
            illust_id = int(m.group(1))
        if page is None:
            page = int(m.group(2)) if m else 0
        if illust_id is None:
            left_out.append((filename, "no artwork id (not a name like 12345678_p0 and no sidecar)"))
            continue
        if not views or bookmarks is None:
            left_out.append((filename, "no view or bookmark count"))
            continue
        if require_images and not image:
            left_out.append((filename, "no image file recorded for it"))
            continue
        rec = (filename, str(dataset / image) if image else None, int(illust_id), -1 if user_id is None else
               int(user_id), float(bookmarks), float(views), int(sanity or 0), is_ai(ai_type, tags),
               len([t for t in (tags or "").split(",") if t]), int(page_count or 1), _time(date, "date"),
               _time(crawled, "crawled"), page)
        prev = first.get(int(illust_id))
        if prev is None or page < prev[-1]:
            if prev is not None:
                left_out.append((prev[0], f"page {prev[-1]} of work {illust_id}: one example per work"))
            first[int(illust_id)] = rec
        else:
            left_out.append((filename, f"page {page} of work {illust_id}: one example per work (its first page)"))
    recs = sorted(first.values(), key=lambda x: x[0])
    cols = list(zip(*recs)) if recs else [[] for _ in range(13)]
    kinds = [object, object, np.int64, np.int64, np.float64, np.float64, np.int64, bool, np.int64, np.int64,
             np.float64, np.float64]
    arrays = [np.array(c, dtype=k) for c, k in zip(cols[:12], kinds)]
    return Records(*arrays), left_out


__all__ = ["AI_TAGS", "SANITY_LEVELS", "Records", "is_ai", "load_records"]
