"""`cityclf pixiv synth OUT_DIR`: a synthetic Pixiv dataset in the document's exact layout.

    OUT_DIR/<first two digits of the id>/<id>_p<N>.png        64x64 pictures
    OUT_DIR/<first two digits of the id>/<id>_p<N>.png.json   gallery-dl sidecars, every field the document shows,
                                                              mtime = crawl time
    OUT_DIR/.database/metadata.sqlite3                        the document's table, created with the document's
                                                              SQL, schema typo included (so it has no total_view
                                                              column), holding what that table can hold

What is planted (so that a test can check a pipeline finds it):
  * image -> popularity: each work has a hidden quality q in [0, 1]; its picture
    has a central block whose brightness and size grow with q. Popularity
    (log views and the log bookmark rate) rises with q.
  * artist effects: each artist has a popularity offset (a following) and a
    signature colour of their own (a stripe along the bottom). A head that sees an artist's works in
    training can score their test works by recognising the colour: the leak
    an ungrouped split rewards and an artist split removes.
  * metadata effects, weaker: older works have more views (upload age), the
    "sensitive" sanity level a little more, AI works a little less.
  * artists, upload dates 2019..2024 (create_date +09:00 and naive UTC date),
    crawl in January 2025, sanity levels 2/4/6 with x_restrict, AI works after
    Nov 2022 flagged illust_ai_type 2 or only tagged (AIイラスト, NovelAI ...),
    type 0 before the flag existed and 1 for declared human works after;
    some works with several pages (_p0, _p1).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .ingest import DATABASE

DOCUMENT_SCHEMA = """CREATE TABLE illusts (
    filename TEXT PRIMARY KEY,
    sanity_level INTEGER,
    total_bookmarks INTEGER
    total_view INTEGER,
    tags TEXT,
    tag_character TEXT,
    illust_ai_type INTEGER,
    page_count INTEGER,
    date TIMESTAMP
)"""

JST = timezone(timedelta(hours=9))
TAGS = ["オリジナル", "女の子", "風景", "青空", "制服", "猫耳", "ロングヘア", "笑顔", "夏", "ファンタジー", "水着", "落書き",
        "創作", "眼鏡", "ポニーテール", "桜"]
CHARACTERS = ["hatsune_miku", "hakurei_reimu", "kirisame_marisa", "frieren", "none"]
AI_TAG_CHOICES = ["AIイラスト", "NovelAI", "StableDiffusion", "midjourney"]
FLAG_DATE = datetime(2022, 11, 1, tzinfo=timezone.utc)  # when Pixiv added illust_ai_type


@dataclass
class SynthReport:
    out: Path
    works: int = 0
    images: int = 0
    artists: int = 0
    truth: dict = field(default_factory=dict)  # illust id -> {"q", "artist", "artist_effect"}


def _picture(rng, size: int, hue: np.ndarray, q: float, sanity: int, ai: bool, page: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    img = np.full((size, size, 3), 110.0)
    img += rng.normal(0, 6, img.shape)
    img[-max(2, size // 6):] = hue * 255.0  # the artist's signature stripe
    if ai:  # a smooth glossy gradient over the whole picture
        img += (60 * (xx + yy) - 60)[..., None]
    half = int(size * (0.15 + 0.25 * q))
    c = size // 2 + (3 if page else 0)
    img[c - half: c + half, c - half: c + half] = 30 + 215 * q
    if sanity >= 4:
        s = size // 5
        img[:s, -s:] = [255, 120, 0] if sanity == 4 else [220, 0, 40]
    return np.clip(img, 0, 255).astype(np.uint8)


def _sidecar(work: dict, page: int, ext: str = "png") -> dict:
    illust_id, user = work["id"], work["user"]
    created: datetime = work["uploaded"]
    return {
        "id": illust_id, "title": f"作品 {illust_id}", "type": "illust", "caption": "", "restrict": 0,
        "user": {"id": user["id"], "name": user["name"], "account": user["account"],
                 "profile_image_urls": {"medium": f"https://i.pximg.net/user-profile/img/{user['id']}_50.jpg"},
                 "is_followed": False, "is_accept_request": False},
        "tags": work["tags"], "tools": ["CLIP STUDIO PAINT"],
        "create_date": created.astimezone(JST).isoformat(), "page_count": work["page_count"],
        "width": work["size"], "height": work["size"], "sanity_level": work["sanity"],
        "x_restrict": work["x_restrict"], "series": None, "total_view": work["views"],
        "total_bookmarks": work["bookmarks"], "is_bookmarked": False, "visible": True, "is_muted": False,
        "illust_ai_type": work["ai_type"], "illust_book_style": 0, "request": None, "num": page,
        "date": created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "rating": ["General", "R-18", "R-18G"][work["x_restrict"]], "suffix": f"_p{page}" if page else "",
        "search": {"word": "オリジナル", "sort": "popular_desc", "target": "partial_match_for_tags",
                   "date_start": None, "date_end": None},
        "category": "pixiv", "subcategory": "search",
        "url": f"https://i.pximg.net/img-original/img/{created.strftime('%Y/%m/%d/%H/%M/%S')}/{illust_id}_p{page}.{ext}",
        "date_url": created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "filename": f"{illust_id}_p{page}.{ext}", "extension": ext,
    }


IMAGE_EFFECT = 3.0  # latent popularity per unit of the picture's quality q in [0, 1]
ARTIST_EFFECT = 0.9  # standard deviation of the artists' offsets
AGE_EFFECT = 0.15  # log views per unit of log(1 + age in days)


def _works(rng, n_works: int, n_artists: int, size: int) -> tuple[list[dict], list[dict]]:
    artists = []
    for a in range(n_artists):
        hue = rng.uniform(0.15, 0.85, 3)
        uid = int(rng.integers(100_000, 99_999_999))
        artists.append({"id": uid, "name": f"artist{a}", "account": f"artist_{a}", "hue": hue,
                        "effect": float(rng.normal(0, ARTIST_EFFECT))})
    start, span = datetime(2019, 1, 1, tzinfo=timezone.utc), (datetime(2024, 10, 1) - datetime(2019, 1, 1)).days
    crawl0 = datetime(2025, 1, 15, tzinfo=timezone.utc)
    works, used = [], set()
    for _ in range(n_works):
        illust_id = int(rng.integers(10_000_000, 130_000_000))
        while illust_id in used:
            illust_id += 1
        used.add(illust_id)
        artist = artists[int(rng.integers(n_artists))]
        q = float(rng.uniform())
        uploaded = start + timedelta(days=float(rng.uniform(0, span)), seconds=int(rng.integers(86400)))
        crawled = crawl0 + timedelta(seconds=int(rng.integers(0, 3 * 86400)))
        age = (crawled - uploaded).total_seconds() / 86400
        sanity = int(rng.choice([2, 4, 6], p=[0.7, 0.2, 0.1]))
        ai = uploaded >= FLAG_DATE and rng.uniform() < 0.3
        tags = list(rng.choice(TAGS, size=int(rng.integers(2, 9)), replace=False))
        if uploaded < FLAG_DATE:
            ai_type = 0
        elif ai and rng.uniform() < 0.7:
            ai_type = 2
        else:
            ai_type = 1
        if ai and (ai_type != 2 or rng.uniform() < 0.5):
            tags.append(str(rng.choice(AI_TAG_CHOICES)))
        latent = (IMAGE_EFFECT * (q - 0.5) + artist["effect"] + 0.25 * (sanity == 4) - 0.2 * ai
                  + float(rng.normal(0, 0.25)))
        views = int(round(math.exp(5.5 + 0.9 * latent + AGE_EFFECT * math.log1p(age) + float(rng.normal(0, 0.15)))))
        rate = math.exp(-2.8 + 0.5 * latent + float(rng.normal(0, 0.15)))
        works.append({
            "id": illust_id, "user": artist, "q": q, "uploaded": uploaded, "crawled": crawled, "sanity": sanity,
            "x_restrict": 1 if sanity == 6 else 0, "ai": ai, "ai_type": ai_type, "tags": tags,
            "page_count": int(rng.choice([1, 1, 1, 1, 2, 3])), "views": max(views, 1),
            "bookmarks": int(round(max(views, 1) * min(rate, 0.9))), "size": size,
            "character": str(rng.choice(CHARACTERS)),
        })
    return artists, works


def synthesize(out: str | os.PathLike, works: int = 300, artists: int = 30, size: int = 64, seed: int = 0,
               images: bool = True) -> SynthReport:
    """Write the dataset (see the module docstring); refuses a folder that already holds files."""
    from PIL import Image

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty folder; choose a new OUT_DIR")
    if works < 1 or artists < 1 or size < 8:
        raise ConfigError("synth needs at least 1 work, 1 artist and 8 px pictures")
    rng = np.random.default_rng(seed)
    artist_list, work_list = _works(rng, works, artists, size)
    report = SynthReport(out, artists=len(artist_list))
    out.mkdir(parents=True, exist_ok=True)
    for w in work_list:
        folder = out / str(w["id"])[:2]
        folder.mkdir(exist_ok=True)
        for page in range(w["page_count"]):
            name = f"{w['id']}_p{page}.png"
            if images:
                pic = _picture(rng, size, w["user"]["hue"], w["q"], w["sanity"], w["ai"], page)
                tmp = folder / (name + ".tmp")
                Image.fromarray(pic).save(tmp, format="PNG")
                os.replace(tmp, folder / name)
                report.images += 1
            write_sidecar(folder / (name + ".json"), _sidecar(w, page), w["crawled"].timestamp())
        report.works += 1
        report.truth[w["id"]] = {"q": w["q"], "artist": w["user"]["id"], "artist_effect": w["user"]["effect"]}
    _document_database(out / DATABASE, work_list)
    return report


def write_sidecar(path: Path, meta: dict, mtime: float | None = None) -> None:
    """A sidecar as gallery-dl writes it (UTF-8, indented), atomically; its mtime set to the crawl time."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=4), encoding="utf-8")
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def _document_database(path: Path, works: list[dict]) -> None:
    """The document's table, with its schema typo: no total_view column, so views are not there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    db = sqlite3.connect(str(tmp))
    try:
        db.execute(DOCUMENT_SCHEMA)
        rows = [(f"{w['id']}_p{p}", w["sanity"], w["bookmarks"], ",".join(w["tags"]), w["character"],
                 w["ai_type"], w["page_count"], w["uploaded"].strftime("%Y-%m-%d %H:%M:%S"))
                for w in works for p in range(w["page_count"])]
        db.executemany("INSERT INTO illusts (filename, sanity_level, total_bookmarks, tags, tag_character, "
                       "illust_ai_type, page_count, date) VALUES (?,?,?,?,?,?,?,?)", rows)
        db.commit()
    finally:
        db.close()
    os.replace(tmp, path)


def sidecars_only(out: str | os.PathLike, sidecars: int, seed: int = 0, artists: int = 1000) -> int:
    """`sidecars` sidecars without pictures (for the ingest benchmark); returns how many works they are."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    _, work_list = _works(rng, sidecars, artists, 512)  # at least one page each: enough works
    n = works = 0
    for w in work_list:
        folder = out / str(w["id"])[:2]
        folder.mkdir(parents=True, exist_ok=True)
        works += 1
        for page in range(w["page_count"]):
            write_sidecar(folder / f"{w['id']}_p{page}.png.json", _sidecar(w, page), w["crawled"].timestamp())
            n += 1
            if n == sidecars:
                return works
    return works


__all__ = ["DOCUMENT_SCHEMA", "SynthReport", "sidecars_only", "synthesize", "write_sidecar"]
