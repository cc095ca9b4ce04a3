"""One gallery-dl Pixiv sidecar (`<image file name>.json`) -> one row of the `illusts` table, or why not.

gallery-dl's fields used (see the document and spec/popularity.md): `id`,
`num` (page), `tags` (list), `total_bookmarks`, `total_view` (counts frozen at
crawl time), `sanity_level` 2/4/6, `x_restrict`, `illust_ai_type` (0 unset,
1 declared not AI, 2 declared AI), `create_date` (ISO with +09:00), `date`
(naive UTC), `page_count`, `width`, `height`, `user.id`. Crawl time is the
sidecar file's mtime (gallery-dl writes it when it downloads) -- unless that
mtime IS the upload time (the metadata post-processor's `mtime: true`), then
the crawl time is unknown (or the one given with `--crawled`).

Tags come as gallery-dl's `tags` option makes them: Japanese names (the
default), dicts {"name", "translated_name"} (`original`; the Japanese name is
kept), or translated strings (`translated`: the English name where Pixiv has
one, e.g. "AI-generated" for AI生成). The AI rule (records.py) knows both.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

#: the columns the document's table defines, in its order
DOCUMENT_COLUMNS = ("filename", "sanity_level", "total_bookmarks", "total_view", "tags", "tag_character",
                    "illust_ai_type", "page_count", "date")
#: what an honest evaluation needs besides them
EXTRA_COLUMNS = ("illust_id", "page", "user_id", "x_restrict", "crawled", "width", "height", "image",
                 "sidecar", "sidecar_mtime_ns", "sidecar_size")
COLUMNS = DOCUMENT_COLUMNS + EXTRA_COLUMNS
COLUMN_TYPES = {"filename": "TEXT PRIMARY KEY", "tags": "TEXT", "tag_character": "TEXT", "date": "TIMESTAMP",
                "crawled": "TIMESTAMP", "image": "TEXT", "sidecar": "TEXT"}

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # gallery-dl's `date`: naive, UTC
PAGE_NAME = re.compile(r"^(\d+)_p(\d+)$")


class SidecarError(ValueError):
    """A sidecar that cannot become a row; the message says why."""


@dataclass
class Row:
    values: dict  # column -> value
    notes: list  # things read but worth saying (dates disagreeing, a page name without _pN ...)
    mtime_is_upload: bool = False  # the sidecar's mtime is the upload time, not the crawl time
    ascii_tags: bool = False  # every tag is plain ASCII: probably gallery-dl's `tags: translated`


def looks_translated(tags: list[str]) -> bool:
    return bool(tags) and all(t.isascii() for t in tags)


def parse_time(text, where: str) -> datetime | None:
    """'2023-05-01T12:00:00+09:00' (create_date) or '2023-05-01 03:00:00' (date, naive = UTC) -> aware UTC."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise SidecarError(f"{where} is {text!r}, not a date text")
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SidecarError(f"{where} {text!r} is not a date like 2023-05-01T12:00:00+09:00 or "
                           "2023-05-01 03:00:00") from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def format_time(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).strftime(TIME_FORMAT)


def _count(meta: dict, key: str, required: bool = True) -> int | None:
    v = meta.get(key)
    if v is None:
        if required:
            raise SidecarError(f"no '{key}'")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0 or int(v) != v:
        raise SidecarError(f"'{key}' is {v!r}, not a count")
    return int(v)


def parse_sidecar(text: str, filename: str, mtime: float, crawled: datetime | None = None) -> Row:
    """A row from a sidecar's text; `filename` is the image file name without extension ('12345678_p0').
    `crawled`: the crawl time to record instead of the sidecar's mtime (`--crawled`)."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise SidecarError(f"malformed or truncated JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(meta, dict):
        raise SidecarError("the JSON is not an object (a gallery-dl sidecar is one)")
    notes = []
    illust_id = _count(meta, "id")
    views = _count(meta, "total_view", required=False)
    if views is None:
        raise SidecarError("no 'total_view': popularity needs the view count")
    if views == 0:
        raise SidecarError("'total_view' is 0: the counts were not loaded when it was crawled; recrawl it")
    bookmarks = _count(meta, "total_bookmarks")
    if bookmarks > views:
        notes.append(f"{bookmarks} bookmarks but only {views} views")
    m = PAGE_NAME.match(filename)
    page = _count(meta, "num", required=False)
    if m:
        if int(m.group(1)) != illust_id:
            raise SidecarError(f"file name {filename} belongs to work {m.group(1)}, but the sidecar says id "
                               f"{illust_id}")
        if page is not None and page != int(m.group(2)):
            notes.append(f"'num' is {page} but the file name says page {m.group(2)}")
        page = int(m.group(2))
    elif page is None:
        page = 0
    tags = meta.get("tags") or []
    if isinstance(tags, str):
        tags = [t for t in tags.split(",") if t]
    if not isinstance(tags, list):
        raise SidecarError(f"'tags' is {type(tags).__name__}, not a list")
    tags = [str(t["name"] if isinstance(t, dict) and "name" in t else t).replace(",", " ") for t in tags]
    created = parse_time(meta.get("create_date"), "'create_date'")
    naive = parse_time(meta.get("date"), "'date'")
    if created and naive and abs((created - naive).total_seconds()) > 60:
        notes.append(f"'create_date' {meta.get('create_date')} and 'date' {meta.get('date')} disagree; "
                     "used create_date")
    uploaded = created or naive
    if uploaded is None:
        notes.append("no upload date ('create_date' or 'date'): left out of time splits and age targets")
    mtime_is_upload = uploaded is not None and abs(mtime - uploaded.timestamp()) <= 1.0
    if crawled is None and not mtime_is_upload:
        crawled = datetime.fromtimestamp(mtime, timezone.utc)
    user = meta.get("user") if isinstance(meta.get("user"), dict) else {}
    user_id = user.get("id")
    if user_id is None:
        notes.append("no 'user.id': left out of artist splits")
    ai_type = meta.get("illust_ai_type")
    if ai_type not in (None, 0, 1, 2):
        notes.append(f"'illust_ai_type' {ai_type!r} is not 0, 1 or 2; read as unset")
        ai_type = 0
    sanity = meta.get("sanity_level")
    if sanity not in (None, 2, 4, 6):
        notes.append(f"'sanity_level' {sanity!r} is not 2, 4 or 6")
    values = {
        "filename": filename,
        "sanity_level": sanity,
        "total_bookmarks": bookmarks,
        "total_view": views,
        "tags": ",".join(tags),
        "illust_ai_type": ai_type,
        "page_count": _count(meta, "page_count", required=False),
        "date": format_time(uploaded),
        "illust_id": illust_id,
        "page": page,
        "user_id": None if user_id is None else int(user_id),
        "x_restrict": meta.get("x_restrict"),
        "crawled": format_time(crawled),
        "width": meta.get("width"),
        "height": meta.get("height"),
    }
    return Row(values, notes, mtime_is_upload, looks_translated(tags))
