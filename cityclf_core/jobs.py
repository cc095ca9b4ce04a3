"""Dataset jobs: embed files into the store, score from it, select, copy or move, tag.

Each stage is a plain function over a list of paths and a store, so that the
same stages can later be run by a distributed engine over shards of a dataset
(see the README's "Past one machine"); nothing here knows about more than one
process except the store's transactions.

    embed_files      files -> decode (threads) -> views per (CLIP, crop policy) -> CLIP in chunks -> store
    score_store      store embeddings -> heads (vectorised) -> per-image results
    select           band (--min/--max) on any heads, top/bottom N
    copy_or_move     never overwriting; relative folders kept
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .crops import CropPlan, CropPolicy, plan_crops, render_views
from .encoders import Encoder, TimedEncoder
from .errors import ConfigError, ImageError, StoreError
from .images import DEFAULT_MAX_PIXELS, decode_image, ordered_map, reason_for
from .pipeline import (
    ChunkedEncoder,
    Group,
    HeadResult,
    ScoringModel,
    default_batch_size,
    head_scores,
    resolve_head_name,
    to_bchw,
)
from .store import EmbeddingStore, EncoderRow, policy_key


# ---------------------------------------------------------------- embedding


@dataclass
class EmbedTarget:
    """One (CLIP, crop policy) pair the heads need, with its row in the store.

    `planner(height, width, content)` overrides the policy's crop plan (training
    uses it for seeded random crops); `key` names the views in the store.
    """

    encoder: Encoder
    policy: CropPolicy
    key: str
    row: EncoderRow
    planner: Callable[[int, int, str], CropPlan] | None = None

    def plan(self, height: int, width: int, content: str) -> CropPlan:
        if self.planner is not None:
            return self.planner(height, width, content)
        return plan_crops(height, width, self.policy, self.encoder.image_size)


@dataclass
class EmbedReport:
    total: int = 0
    embedded: int = 0  # files whose embeddings were computed now
    reused: int = 0  # unchanged, re-hashed or duplicate files: nothing computed
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    views: int = 0
    forward_seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{self.total} file(s)", f"{self.embedded} embedded", f"{self.reused} already in the store"]
        if self.failed:
            parts.append(f"{len(self.failed)} skipped")
        return ", ".join(parts)


def embed_targets(model: ScoringModel, store: EmbeddingStore, tiling: str = "auto",
                  upscale: bool = True) -> list[EmbedTarget]:
    """The (CLIP, crop policy) pairs `model` needs, each CLIP registered in the store."""
    targets = []
    for g in model.groups(tiling, upscale):
        enc = g.encoder
        if enc.embed_dim is None:
            raise StoreError(f"CLIP {enc.name}: its embedding size is unknown until it runs; use a transformers CLIP")
        row = store.register_encoder(enc.identity, enc.name, enc.source,
                                     enc.image_size, enc.embed_dim)
        targets.append(EmbedTarget(enc, g.policy, policy_key(g.policy), row))
    return targets


@dataclass
class _Prepared:
    index: int
    path: str
    size: int | None = None
    mtime_ns: int | None = None
    content: str | None = None
    width: int | None = None
    height: int | None = None
    views: dict[int, torch.Tensor] = field(default_factory=dict)  # target index -> uint8 views
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    unchanged: bool = False  # same path, size and mtime as stored, all embeddings present


def embed_files(
    store: EmbeddingStore,
    targets: list[EmbedTarget],
    paths: Sequence[str | os.PathLike],
    batch_size: int | None = None,
    workers: int = 2,
    prefetch: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_file: Callable[[str, str | None], None] | None = None,
) -> EmbedReport:
    """Make sure every file has stored embeddings for every target; compute only what is missing.

    Decoding, hashing and cropping run in `workers` threads (Pillow and torch
    release the GIL) ahead of the model; the main thread only runs CLIP and
    writes. Every chunk's results are committed at once, so an interrupted run
    keeps all it finished. `on_file(path, error)` is called once per file.
    """
    report = EmbedReport(total=len(paths))
    known = [store.known_contents(t.row.id, t.key) for t in targets]
    known_lock = threading.Lock()
    pin = any(t.encoder.device.type == "cuda" for t in targets)

    def prepare(index: int, path: str) -> _Prepared:
        item = _Prepared(index, path)
        try:
            st = os.stat(path)
            item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
            prior = store_file(path)
            if prior is not None and prior.status == "ok" and (prior.size, prior.mtime_ns) == (item.size, item.mtime_ns):
                with known_lock:
                    if all(prior.content in k for k in known):
                        item.content, item.unchanged = prior.content, True  # not even read
                        return item
            with open(path, "rb") as f:
                data = f.read()
            item.content = hashlib.sha256(data).hexdigest()
            with known_lock:
                needed = [i for i, k in enumerate(known) if item.content not in k]
            if not needed:
                return item  # touched, renamed or a duplicate: embeddings exist
            decoded = decode_image(path, max_pixels=max_pixels, data=data)
            item.width, item.height = decoded.size
            item.notes = decoded.notes
            x = decoded.pixels
            for i in needed:
                t = targets[i]
                plan = t.plan(int(x.shape[0]), int(x.shape[1]), item.content)
                views = render_views(to_bchw(x, None, path), plan, t.encoder.image_size)
                views = views.mul_(255).round_().to(torch.uint8)  # exact: views are 8-bit already
                item.views[i] = views.pin_memory() if pin else views
        except ImageError as e:
            item.error = reason_for(path, str(e))
        except OSError as e:
            item.error = f"cannot read it ({e.strerror or e})"
        except MemoryError:
            item.error = "not enough memory to decode it"
        return item

    # sqlite3 connections are not shared across threads: workers look files up through their own
    local = threading.local()
    readers: list[EmbeddingStore] = []

    def store_file(path: str):
        if not hasattr(local, "store"):
            local.store = EmbeddingStore(store.path, create=False, readonly=True)
            with known_lock:
                readers.append(local.store)
        return local.store.file(path)

    size = batch_size or (default_batch_size(targets[0].encoder.device) if targets else 8)
    timers = [TimedEncoder(t.encoder) for t in targets]
    chunkers = [ChunkedEncoder(timer, size) for timer in timers]
    waiting: dict[int, tuple[_Prepared, set[int], dict[int, np.ndarray]]] = {}

    def write(done_per_target: list[list[tuple[int, torch.Tensor]]]) -> None:
        """Commit finished embeddings, and the file rows of items now complete."""
        finished_items = []
        with store.transaction():
            for ti, done in enumerate(done_per_target):
                for index, emb in done:
                    item, missing, _ = waiting[index]
                    store.put_embedding(item.content, targets[ti].row.id, targets[ti].key, emb.numpy())
                    missing.discard(ti)
                    with known_lock:
                        known[ti].add(item.content)
                    if not missing:
                        finished_items.append(item)
            for item in finished_items:
                store.put_file(item.path, item.size, item.mtime_ns, item.content, item.width, item.height,
                               notes=item.notes)
                waiting.pop(item.index)
        for item in finished_items:
            report.embedded += 1
            for note in item.notes:
                report.notes.append((item.path, note))
            if on_file:
                on_file(item.path, None)

    def finish(item: _Prepared) -> None:
        if item.error:
            with store.transaction():
                store.put_file(item.path, item.size, item.mtime_ns, None, status="failed", error=item.error)
            report.failed.append((item.path, item.error))
            if on_file:
                on_file(item.path, item.error)
            return
        if not item.views:
            if not item.unchanged:  # touched, renamed or a duplicate: record the path, compute nothing
                with store.transaction():
                    store.put_file(item.path, item.size, item.mtime_ns, item.content, item.width, item.height)
            report.reused += 1
            if on_file:
                on_file(item.path, None)
            return
        waiting[item.index] = (item, set(item.views), {})
        done = [[] for _ in targets]
        for ti, views in item.views.items():
            done[ti] = chunkers[ti].add(item.index, views)
        item.views = {}  # the chunkers hold them now
        if any(done):
            write(done)

    try:
        for item in ordered_map(lambda job: prepare(*job), enumerate(str(p) for p in paths), max(1, workers),
                                prefetch or max(4, 2 * workers)):
            finish(item)
        final = [c.flush() for c in chunkers]
        if any(final):
            write(final)
    finally:
        for reader in readers:
            reader.close()
        report.views = sum(t.views for t in timers)
        report.forward_seconds = sum(t.seconds for t in timers)
    return report


# ---------------------------------------------------------------- scoring from the store


class StoredEncoder(Encoder):
    """A CLIP known only by its rows in a store: carries identity and sizes, cannot encode."""

    def __init__(self, row: EncoderRow):
        self.row = row
        self.identity, self.name = row.identity, row.name
        self.image_size, self.embed_dim = row.image_size, row.embed_dim

    def encode(self, views):
        raise StoreError(f"CLIP {self.name} is not loaded: scores come from stored embeddings only")


def score_store(
    store: EmbeddingStore,
    model: ScoringModel,
    paths: Sequence[str] | None = None,
    combine: str = "mean",
    tiling: str = "auto",
    upscale: bool = True,
    chunk: int = 8192,
) -> Iterator[tuple[list[tuple[str, dict[str, HeadResult]]], list[tuple[str, str]]]]:
    """Score stored embeddings chunk by chunk: yields (results in path order, [(path, why not scored)])."""
    rows = store.files(paths)
    wanted = [r.path for r in rows]
    if paths is not None:
        have = set(wanted)
        absent = [(p, "not in the store (not embedded yet, or failed)") for p in paths if p not in have]
        if absent:
            yield [], absent
    groups: list[Group] = model.groups(tiling, upscale)
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        per_path: dict[str, dict[str, HeadResult]] = {p: {} for p in part}
        missing: dict[str, str] = {}
        for g in groups:
            row = store.find_encoder(g.encoder.identity, g.encoder.source)
            key = policy_key(g.policy)
            found, counts, stacked, absent = store.read_embeddings(part, row, key)
            for p in absent:
                missing.setdefault(p, f"no stored embeddings of {row.name} with {g.policy.describe()}; "
                                      "run cityclf embed with these models")
            if not found:
                continue
            scores = head_scores(g.bindings, torch.from_numpy(stacked), counts, combine)
            for i, p in enumerate(found):
                for s in scores:
                    per_path[p][s.binding.name] = s.result(i)
        order = model.names
        results = [(p, {n: per_path[p][n] for n in order}) for p in part if p not in missing]
        yield results, sorted(missing.items())


# ---------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8): the third of eight shards (K counts from 0)."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected K/N, e.g. 0/4 for the first of four shards") from None
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard {text!r}: K must be in 0..N-1")
    return k, n


def in_shard(path: str | os.PathLike, roots: Sequence[str | os.PathLike], shard: tuple[int, int]) -> bool:
    """Whether `path` belongs to shard K of N: a stable hash of its path relative to its input root.

    Relative paths make the split the same on every machine, wherever the
    dataset is mounted; each shard embeds into its own store (see merge_stores).
    """
    k, n = shard
    rel = os.path.basename(path)
    p = os.path.abspath(path)
    for root in sorted((os.path.abspath(r) for r in roots), key=len, reverse=True):
        if p.startswith(root.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(p, root)
            break
    digest = hashlib.sha1(rel.replace(os.sep, "/").encode()).digest()
    return int.from_bytes(digest[:8], "big") % n == k


def merge_stores(target: EmbeddingStore, sources: Sequence[str | os.PathLike]) -> dict[str, int]:
    """Copy every encoder, embedding, file and score of `sources` into `target` (existing rows win)."""
    added = {"embeddings": 0, "files": 0, "scores": 0}
    for src in sources:
        with EmbeddingStore(src, create=False, readonly=True) as other:
            ids = {}
            for e in other.encoders():
                ids[e.id] = target.register_encoder(e.identity, e.name, e.source, e.image_size, e.embed_dim).id
            with target.transaction():
                db = target.db
                before = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in added}
                for content, enc_id, policy, views, data in other.db.execute("SELECT * FROM embeddings"):
                    db.execute("INSERT OR IGNORE INTO embeddings VALUES (?,?,?,?,?)",
                               (content, ids[enc_id], policy, views, data))
                db.executemany("INSERT OR IGNORE INTO files VALUES (?,?,?,?,?,?,?,?,?,?)",
                               other.db.execute("SELECT * FROM files"))
                db.executemany("INSERT OR IGNORE INTO scores VALUES (?,?,?,?,?,?,?)",
                               other.db.execute("SELECT * FROM scores"))
                for t in added:
                    added[t] += db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] - before[t]
    return added


# ---------------------------------------------------------------- selection


@dataclass(frozen=True)
class Bound:
    head: str | None  # None: the first (or --sort-by) head
    label: str | None  # a class of that head, else its score
    value: float
    kind: str  # "min" or "max"

    @classmethod
    def parse(cls, text: str, kind: str) -> "Bound":
        text = text.strip()
        head = label = None
        if "=" in text:
            target, _, number = text.rpartition("=")
            head, _, label = target.strip().partition(":")
            head, label = head.strip() or None, label.strip() or None
        else:
            number = text
        try:
            value = float(number)
        except ValueError:
            raise ConfigError(f"--{kind} {text!r}: expected VALUE, HEAD=VALUE or HEAD:CLASS=VALUE") from None
        return cls(head, label, value, kind)


def value_of(results: dict[str, HeadResult], head: str | None, label: str | None) -> float:
    name = resolve_head_name(list(results), head)
    r = results[name]
    return r.value_of(label) if label else r.score


def select(rows: list[tuple[str, dict[str, HeadResult]]], bounds: Sequence[Bound] = (), top: int | None = None,
           bottom: int | None = None, sort_by: str | None = None) -> list[tuple[str, dict[str, HeadResult]]]:
    """Rows inside every bound; then the top (or bottom) N by the sort head's score (ties: path order)."""
    kept = []
    for path, res in rows:
        ok = True
        for b in bounds:
            v = value_of(res, b.head, b.label)
            if math.isnan(v) or (v < b.value if b.kind == "min" else v > b.value):
                ok = False
                break
        if ok:
            kept.append((path, res))
    if top or bottom:
        head, _, label = (sort_by or "").partition(":")
        key = lambda row: value_of(row[1], head or None, label or None)  # noqa: E731
        kept.sort(key=key, reverse=bool(top))
        kept = kept[: top or bottom]
    return kept


# ---------------------------------------------------------------- copy / move


def destination(path: str, roots: Sequence[str], to: str | os.PathLike) -> Path:
    """`to` / (path relative to the input root it came from), keeping sub-folders."""
    p = os.path.abspath(path)
    for root in sorted((os.path.abspath(r) for r in roots), key=len, reverse=True):
        if os.path.isdir(root) and (p == root or p.startswith(root.rstrip(os.sep) + os.sep)):
            return Path(to) / os.path.relpath(p, root)
        if os.path.isfile(root) and p == root:
            return Path(to) / os.path.basename(p)
    return Path(to) / os.path.basename(p)


def free_name(target: Path, taken: set[Path] = frozenset()) -> Path:
    """`name.png` -> `name-1.png`, `name-2.png`, ... the first that neither exists nor is planned."""
    n = 1
    while True:
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        if not candidate.exists() and candidate not in taken:
            return candidate
        n += 1


@dataclass
class Transfer:
    source: str
    target: str
    action: str  # "copy" / "move" / "skip" (exists) / "renamed copy" ...
    done: bool = False
    error: str | None = None


def copy_or_move(paths: Sequence[str], roots: Sequence[str], to: str | os.PathLike, move: bool = False,
                 on_conflict: str = "rename", dry_run: bool = False) -> list[Transfer]:
    """Copy (or move) files under `to`, keeping their folders; never overwrites an existing file.

    on_conflict: 'rename' (name-1.png), 'skip', or 'error' (stop before touching anything).
    """
    if on_conflict not in ("rename", "skip", "error"):
        raise ConfigError(f"--on-conflict must be rename, skip or error, not {on_conflict!r}")
    verb = "move" if move else "copy"
    plan: list[Transfer] = []
    taken: set[Path] = set()
    for src in paths:
        dst = destination(src, roots, to)
        if os.path.abspath(dst) == os.path.abspath(src):
            plan.append(Transfer(src, str(dst), "skip", error="source and destination are the same file"))
            continue
        if dst.exists() or dst in taken:
            if on_conflict == "error":
                raise ConfigError(f"{dst} already exists (from {src}); nothing was {verb}d. "
                                  "Use --on-conflict rename or skip, or another destination.")
            if on_conflict == "skip":
                plan.append(Transfer(src, str(dst), "skip", error="destination exists"))
                continue
            dst = free_name(dst, taken)
        taken.add(dst)
        plan.append(Transfer(src, str(dst), verb))
    if dry_run:
        return plan
    for t in plan:
        if t.action == "skip":
            continue
        try:
            _transfer(Path(t.source), Path(t.target), move)
            t.done = True
        except OSError as e:
            t.error = f"{e.strerror or e}"
    return plan


def _transfer(src: Path, dst: Path, move: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if move:
        try:
            os.link(src, dst)  # fails if dst exists: never overwrites, atomic on one file system
            os.unlink(src)
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    with open(src, "rb") as fin, open(dst, "xb") as fout:  # 'x': fails if dst appeared meanwhile
        shutil.copyfileobj(fin, fout, 1 << 20)
    shutil.copystat(src, dst)
    if move:
        os.unlink(src)



__all__ = [
    "Bound",
    "EmbedReport",
    "EmbedTarget",
    "StoredEncoder",
    "Transfer",
    "copy_or_move",
    "destination",
    "embed_files",
    "embed_targets",
    "in_shard",
    "merge_stores",
    "parse_shard",
    "score_store",
    "select",
]
