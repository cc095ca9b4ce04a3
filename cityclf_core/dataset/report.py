"""A static gallery of stored scores: a folder that opens from file:// (cityclf report).

    DIR/index.html            the page (report_page.py): grid, sort, range filters, histograms, details
    DIR/data/meta.js          heads, columns, row and chunk counts
    DIR/data/chunk-NNNN.js    CHUNK rows each, columnar, calling cityclfReport.chunk(k, {...})
    DIR/thumbs/ab/HASH-PX.webp  one thumbnail per file content (many paths with one content share it)
    DIR/.cityclf-report       marks the folder as a report (only such a folder is replaced)

Data files are scripts, not JSON, because a page opened from file:// may load
`<script src>` but not fetch(). Rows are in the store's path order, so the page
breaks ties by row number exactly as `cityclf query` breaks them by path.

A rerun into the same DIR writes the new report beside it, reusing the old
thumbnails of unchanged contents (hard links), then swaps the two folders and
removes the old one: a kill leaves the old report or the new one. Where the
system cannot exchange two names in one step (Linux can), the swap is two
renames; a kill between them leaves the old report beside DIR, and the next run
puts it back first. A folder that is not empty and is
not a report is refused; so is a report holding files it did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from ..errors import CityClfError, ConfigError, ImageError
from .select import Selection
from .stored_select import select_stored

MARKER = ".cityclf-report"
CHUNK = 5000  # rows per data file: a few hundred kB, parsed in milliseconds
THUMB_FORMAT = "webp"
_NEW, _OLD = "cityclf-new", "cityclf-old"


@dataclass
class ReportSummary:
    out: Path
    rows: int
    thumbs_made: int
    thumbs_reused: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------- the output folder


def _expected(rel: str, partial: bool = False) -> bool:
    """Whether a file (relative path, '/'-separated) is one a report writes (`partial`: or a thumbnail being
    written, as a killed run leaves it)."""
    parts = rel.split("/")
    if len(parts) == 1:
        return parts[0] in ("index.html", MARKER)
    if parts[0] == "data":
        return len(parts) == 2 and parts[1].endswith(".js")
    if parts[0] == "thumbs":
        return len(parts) == 3 and parts[2].endswith(("." + THUMB_FORMAT,) + ((".part",) if partial else ()))
    return False


def _stranger(folder: Path, partial: bool = False) -> str | None:
    """The first file or link under `folder` that a report does not write (relative), None when all are ours."""
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if not _expected(rel, partial) or os.path.islink(os.path.join(root, name)):
                return rel
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    return None


def check_out_dir(out: Path) -> bool:
    """Whether `out` holds a previous report (True), or is absent or empty (False); else ConfigError (exit 2)."""
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_symlink() or not out.is_dir():
        raise ConfigError(f"--out {out}: it is not a folder; give a new or empty folder, or a previous report")
    names = os.listdir(out)
    if not names:
        return False
    if MARKER not in names:
        raise ConfigError(f"--out {out}: the folder is not empty and is not a cityclf report; give a new or empty "
                          "folder (the report never writes over other files)")
    stranger = _stranger(out)
    if stranger:
        raise ConfigError(f"--out {out}: it holds {stranger}, which the report did not write; move it out "
                          "first (a report folder is replaced whole)")
    return True


def _sweep(out: Path) -> None:
    """Remove the half-written or old reports a killed run left beside `out`: folders under our temporary names
    holding nothing but report files."""
    prefix = f".{out.name}.{_NEW}-", f".{out.name}.{_OLD}-"
    for name in sorted(os.listdir(out.parent)):
        side = out.parent / name
        if name.startswith(prefix) and side.is_dir() and not side.is_symlink() and not _in_use(side) \
                and not _stranger(side, True):
            if name.startswith(prefix[1]) and not out.exists() and (side / MARKER).is_file():
                os.rename(side, out)  # killed between the two renames of a swap: the old report goes back
            else:
                shutil.rmtree(side, ignore_errors=True)


@contextlib.contextmanager
def _beside(out: Path) -> Iterator[None]:
    """One report run at a time looks at and swaps the folders beside `out` (an advisory lock on its parent;
    the system drops it however the run ends)."""
    if fcntl is None:  # Windows: runs into one folder are not serialised
        yield
        return
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _hold(folder: Path) -> int:
    """A shared lock on a folder being written, kept until the descriptor is closed (-1 where there is no flock)."""
    if fcntl is None:
        return os.open(os.devnull, os.O_RDONLY)
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _in_use(folder: Path) -> bool:
    """Whether another run is writing `folder` (it holds the lock _hold took)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(new: Path, out: Path, had_old: bool) -> None:
    """Put the finished `new` folder at `out`; the old report (checked to be one) is removed after."""
    if not had_old:
        if out.exists():
            os.rmdir(out)  # empty (checked); a file put there meanwhile makes this fail rather than be lost
        os.rename(new, out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # now the old report
        return
    old = out.parent / f".{out.name}.{_OLD}-{secrets.token_hex(4)}"
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old)


# ---------------------------------------------------------------- thumbnails


def _thumb_name(content: str, px: int) -> str:
    return f"thumbs/{content[:2]}/{content}-{px}.{THUMB_FORMAT}"


def _make_thumb(path: str, target: Path, px: int) -> None:
    from PIL import Image

    from ..scoring.images import decode_image

    img = Image.fromarray(decode_image(path).pixels.numpy())
    img.thumbnail((px, px), Image.Resampling.BILINEAR, reducing_gap=2.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    img.save(tmp, format="WEBP", quality=80, method=2)
    os.replace(tmp, target)


def make_thumbs(items: dict[str, str], new: Path, old: Path | None, px: int, workers: int,
                on_bad: Callable[[str, str], None]) -> tuple[int, int]:
    """Thumbnails of {content: a path with that content} under `new`, hard-linked from `old` (a previous
    report) where it has them; (made, reused). Unreadable images are passed to on_bad(path, why)."""
    reused, todo = 0, []
    for content, path in items.items():
        rel = _thumb_name(content, px)
        target = new / rel
        if old is not None and (old / rel).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(old / rel, target)
            except OSError:
                shutil.copyfile(old / rel, target)
            reused += 1
        else:
            todo.append((path, target))

    def one(job):
        path, target = job
        try:
            _make_thumb(path, target, px)
            return None
        except ImageError as e:
            return path, str(e)
        except OSError as e:
            return path, f"cannot read it ({e.strerror or e})"

    made = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow decodes and resizes without the GIL
        for bad in pool.map(one, todo, chunksize=16):
            if bad:
                on_bad(*bad)
            else:
                made += 1
    return made, reused


# ---------------------------------------------------------------- the rows


def _captions(paths: list[str]) -> dict[str, str]:
    """{path: its caption sidecar's text (image.txt)} for the images that have one, read as the Tag node reads
    them (never following a link, never blocking on a FIFO); an unreadable one counts as none."""
    from ..confined import Area
    from ..sidecars import read_regular, sidecar_path

    by_folder: dict[str, list[str]] = {}
    for p in paths:
        by_folder.setdefault(os.path.dirname(p), []).append(p)
    out = {}
    for parent, members in by_folder.items():
        try:
            with Area([parent]) as area, area.folder(parent) as folder:
                for p in members:
                    try:
                        found = read_regular(folder, sidecar_path(p).name)
                    except (CityClfError, OSError):
                        continue
                    if found:
                        out[p] = found[0][:64 * 1024].decode("utf-8", "replace").lstrip("\ufeff").strip()
        except (CityClfError, OSError):
            continue
    return out


def _columns(rows) -> list[dict]:
    """One column per head score, and one per class of a head with class probabilities ("HEAD:CLASS")."""
    cols, seen = [], set()
    for _, results in rows:
        for head, r in results.items():
            if head not in seen:
                seen.add(head)
                cols.append({"key": head, "head": head, "label": None})
                for label in (r.probs or {}):
                    cols.append({"key": f"{head}:{label}", "head": head, "label": label})
    return cols


def _value(results, col) -> float | None:
    import math

    r = results.get(col["head"])
    if r is None:
        return None
    v = r.score if col["label"] is None else (r.probs or {}).get(col["label"])
    return v if v is not None and math.isfinite(v) else None


def _js(call: str, *args) -> bytes:
    """A data file: a script calling cityclfReport.CALL(ARGS...) (ASCII JSON: any file name survives)."""
    text = ",".join(json.dumps(a, ensure_ascii=True, allow_nan=False, separators=(",", ":")) for a in args)
    return f"cityclfReport.{call}({text});\n".encode("ascii")


def _write(path: Path, data: bytes) -> None:
    """A page or data file, on disk before the swap makes it visible (thumbnails are not synced: one lost to a
    crash shows as a missing picture and is made again by the next run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_report(store, heads: Sequence[str], combine: str, selection: Selection, out: str | os.PathLike,
                 thumb: int = 192, workers: int = 4, on_skip: Callable[[str, str], None] | None = None,
                 title: str | None = None) -> ReportSummary:
    """Write the report of `store`'s scores (the rows `selection` picks, as `cityclf query` would) to `out`."""
    from ..pathtext import shown
    from .reader import read_and_hash
    from .report_page import PAGE

    started = time.perf_counter()
    out = Path(os.path.abspath(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: its folder {out.parent} cannot be made ({e.strerror or e}); "
                          "give a folder that can be written") from None
    with _beside(out):
        _sweep(out)  # first: it may put back the old report a killed swap left beside `out`
        had_old = check_out_dir(out)
        new = out.parent / f".{out.name}.{_NEW}-{secrets.token_hex(4)}"
        new.mkdir()
        held = _hold(new)  # ours while this run lives: another run's sweep leaves it alone
    skip = on_skip or (lambda p, why: None)
    try:
        _write(new / MARKER, json.dumps({"report": 1}).encode())
        rows = list(select_stored(store, heads, combine, selection, on_skip=skip))
        chosen = {p for p, _ in rows}
        rank = {}
        for block in store.select_paths(combine, heads[0], None):  # the store's path order: query's ties
            for p in block:
                if p in chosen:
                    rank[p] = len(rank)
        rows.sort(key=lambda row: rank[row[0]])
        contents = {f.path: f.content for f in store.files([p for p, _ in rows])}
        bad: dict[str, str] = {}
        keys: dict[str, str] = {}
        for p, _ in rows:
            content = contents.get(p)
            if not content:  # a file the store holds no content hash of: hashed here
                try:
                    content, _ = read_and_hash(p, None)
                except ImageError as e:
                    bad[p] = str(e)
                    continue
                except OSError as e:
                    bad[p] = f"cannot read it ({e.strerror or e})"
                    continue
            keys[p] = content
        firsts: dict[str, str] = {}
        for p, c in keys.items():
            firsts.setdefault(c, p)
        made, reused = make_thumbs(firsts, new, out if had_old else None, thumb, workers,
                                   lambda p, why: bad.__setitem__(p, why))
        bad_contents = {keys[p] for p in bad if p in keys}
        captions = _captions([p for p, _ in rows])
        cols = _columns(rows)
        heads_meta = []
        for h in heads:
            sample = next((res[h] for _, res in rows if h in res), None)
            heads_meta.append({"name": h, "kind": sample.kind.name if sample else None,
                               "classes": list(sample.probs or {}) if sample else []})
        common = os.path.commonpath([os.path.dirname(p) for p, _ in rows]) if rows else ""
        n_chunks = (len(rows) + CHUNK - 1) // CHUNK
        for k in range(n_chunks):
            part = rows[k * CHUNK:(k + 1) * CHUNK]
            payload = {
                "start": k * CHUNK,
                "path": [p for p, _ in part],
                "name": [shown(os.path.relpath(p, common) if common else p) for p, _ in part],
                "href": [Path(p).as_uri() for p, _ in part],
                "thumb": [None if p not in keys or keys[p] in bad_contents else _thumb_name(keys[p], thumb)
                          for p, _ in part],
                "tags": [captions.get(p, "") for p, _ in part],
                "label": {h: [res[h].label if h in res else None for _, res in part] for h in heads},
                "values": [[_value(res, c) for _, res in part] for c in cols],
            }
            _write(new / "data" / f"chunk-{k:04d}.js", _js("chunk", k, payload))
        meta = {"title": title or f"cityclf report: {shown(str(store.path))}", "store": shown(str(store.path)),
                "combine": combine, "heads": heads_meta, "columns": cols, "rows": len(rows), "chunks": n_chunks,
                "chunk": CHUNK, "thumb": thumb, "folder": shown(common),
                "made": time.strftime("%Y-%m-%d %H:%M:%S")}
        _write(new / "data" / "meta.js", _js("meta", meta))
        _write(new / "index.html", PAGE.encode("utf-8"))
        with _beside(out):  # another run may have swapped its report in meanwhile: looked at again
            _swap_in(new, out, check_out_dir(out))  # (only report files: nothing of the user's goes with it)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    finally:
        os.close(held)
    for p, why in sorted(bad.items()):
        skip(p, f"no thumbnail: {why}")
    return ReportSummary(out, len(rows), made, reused, sorted(bad.items()), time.perf_counter() - started)


__all__ = ["CHUNK", "MARKER", "ReportSummary", "check_out_dir", "make_thumbs", "write_report"]
