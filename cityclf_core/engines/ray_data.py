"""Embed (and score) a dataset on Ray Data, into the same store as a local run.

    driver     the heads and CLIPs (dataset.passes.choose_clips: the store's
               when every file is in it already, else loaded on the CPU for
               their identities and sizes); skip the files the store already
               has (dataset.plan.files_to_embed: same path, size, mtime,
               embeddings present); group the rest into shards of `files_per_shard`
               (the file list goes to Ray as at most MAX_BLOCKS Arrow blocks, and the contents the store
               has as one sorted array in the object store, shared by reference: start-up does not grow
               with the dataset beyond listing it)
    CPU tasks  read, hash, decode, crop: dataset.reader.read_file (the local reader's), one file at a time
    actors     CLIP (an elastic pool, ray_cluster.actor_pool: GPU actors, or CPU actors), chunked like a local run
               (pipeline.ChunkedEncoder); every head sharing that CLIP pass
               runs in the same actor (pipeline.head_scores) when scoring; each
               batch's rows written by the actor as Parquet parts of their shards
               (parquet.write_part, atomically) into the run's parts folder in the
               shard folder, and only a manifest row per file (MANIFEST: path,
               shard, error, notes, views, scored) returned to the driver
    driver     once the manifests cover a shard, renames its parts into the shard
               (parquet.finish_shard) and imports it into the store (one
               transaction, recorded); the embeddings never pass through Ray to it

Resuming: a rerun first imports shards written but not imported (a killed
driver), then skips every file the store has, so nothing is computed twice and
nothing is lost. Files must be readable at the same path on every Ray node (a
shared or identically mounted file system): a file the driver sees and a node
does not stops the run with an error naming the node and the path (no failed row
is stored for it). The shard folder must be one every node sees at the same path
too (on a cluster, shared storage): a worker that does not find the run's parts
folder stops the run naming its node. The store stays on the driver's machine. A
worker's failure (no CUDA, another CLIP, out of memory) reaches the driver as one
line (ray_cluster.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..dataset.embed import EmbedReport, register_passes
from ..dataset.passes import ModelSpec, choose_clips
from ..dataset.plan import files_to_embed
from ..dataset.reader import Prepared, read_file
from ..errors import CityClfError, ConfigError, StoreError
from ..scoring.crops import CropPolicy, plan_crops
from ..scoring.embedding import ChunkedEncoder, default_batch_size
from ..scoring.encoders import Encoder, TimedEncoder
from ..scoring.images import DEFAULT_MAX_PIXELS
from ..scoring.pipeline import Group, ScoringModel, head_scores
from ..store import Store
from . import parquet, require_ray
from .ray_cluster import ClusterError, actor_pool, cluster_cpus, cluster_error, connect, node_name, worker_errors

#: files per CPU task call, and per CLIP actor call
PREPARE_BATCH = 16
ACTOR_BATCH = 64
#: the most blocks the file list is cut into (each becomes a decoding task), and the files a block holds when
#: the cluster's CPUs get four blocks each without it: a task costs Ray milliseconds, so on one machine
#: 4-file blocks spent more time scheduling than decoding small images
MAX_BLOCKS = 1000
BLOCK_FILES = 128
#: what an actor returns to the driver per file: no embeddings, no views
MANIFEST = ("path", "shard", "error", "notes", "views", "scored")
#: memory a decoding task reserves (bytes): its worker (Python, torch) and one large image decoded and cropped
DECODE_MEMORY = 512 * 2**20


# ---------------------------------------------------------------- what to run


def encoder_meta(e: Encoder) -> dict:
    """How a shard's metadata names a CLIP."""
    return {"identity": e.identity, "name": e.name, "source": e.source, "image_size": int(e.image_size),
            "embed_dim": int(e.embed_dim)}


@dataclass
class RayOptions:
    address: str | None = None  # None: a Ray already started in this process, else a new local one
    workers: int | tuple[int, int | None] | None = None  # CLIP actors: N, (MIN, MAX), None: (1, as many as fit)
    num_gpus_per_worker: float | None = None  # None: 1 when the cluster has or can start GPUs, else 0 (CPU actors)
    files_per_shard: int = 1000
    batch_size: int | None = None  # views per CLIP forward (default: 64 on a GPU, 8 on a CPU)
    device: str = "auto"  # the actors' device; auto: cuda when they hold a GPU
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class RayReport(EmbedReport):
    resumed: int = 0  # shards a killed run had written, imported now
    shards: int = 0  # shards written by this run
    scored: set[str] = field(default_factory=set)  # files whose heads ran in the actors this run
    model: ScoringModel | None = None  # the driver's copy of the heads (for scoring what was not computed)
    first_embedding_s: float | None = None  # from the call to the first embedding in the store


# ---------------------------------------------------------------- the job


def run_job(
    store: Store,
    spec: ModelSpec,
    paths: Sequence[str],
    shard_dir: str | os.PathLike,
    options: RayOptions = RayOptions(),
    on_file: Callable[[str, str | None], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> RayReport:
    """Make sure every file has stored embeddings (and, with spec.score, fresh scores) using Ray Data."""
    start = time.perf_counter()
    report = RayReport(total=len(paths))
    if options.files_per_shard < 1:
        raise ConfigError(f"files per shard must be at least 1, not {options.files_per_shard}")
    spec = spec.portable()
    shard_dir = os.path.abspath(shard_dir)  # the workers' working folder is not the driver's
    parquet.remove_partial(shard_dir)
    for shard in parquet.pending_shards(store, shard_dir):  # written by a run killed before importing them
        parquet.import_shard(store, shard)
        report.resumed += 1
    # the driver never runs CLIP: it needs identities, sizes and heads (the store's, when nothing needs embedding)
    job = choose_clips(store, spec, paths, "cpu")
    report.model, targets = job.model, job.groups
    if not job.loaded:  # every file is unchanged and embedded: no work for the workers
        report.reused = len(paths)
        for path in paths:
            if on_file:
                on_file(path, None)
        return report
    rows = register_passes(store, job.passes)  # also refuses a CLIP of unknown embedding size
    known = [store.known_contents(r.id, t.clip.key) for r, t in zip(rows, targets)]
    work = []
    for path, size, mtime, needed in files_to_embed(store, known, paths):  # not stat'ed: the CPU task says why
        if needed:
            work.append((path, size, mtime))
            continue
        report.reused += 1
        if on_file:
            on_file(path, None)
    if not work:
        return report
    signature = json.dumps([[t.encoder.identity, t.clip.key, [b.name for b in t.bindings]] for t in targets]
                           + [spec.combine, spec.score])
    n = options.files_per_shard
    shards = {parquet.shard_name(signature, work[i:i + n]): [p for p, _, _ in work[i:i + n]]
              for i in range(0, len(work), n)}
    seen = [size is not None for _, size, _ in work]  # stat'ed by the driver: a node must see it too
    del work  # a tuple per file: not kept through the run
    encoders = list({t.encoder.identity: encoder_meta(t.encoder) for t in targets}.values())

    parts = parquet.parts_folder(shard_dir, uuid.uuid4().hex[:12])  # this run's: a killed run's is not reused
    try:
        parts.mkdir(parents=True)
    except OSError as e:
        raise ConfigError(f"shard folder {shard_dir}: cannot write in it ({e.strerror or e}); name a writable "
                          "folder (--shard-dir), on a cluster one every node sees at the same path") from None

    def finish(name: str, got: list[dict]) -> None:
        order = {p: i for i, p in enumerate(shards[name])}
        got.sort(key=lambda r: order[r["path"]])
        parquet.import_shard(store, parquet.finish_shard(shard_dir, parts, name))
        report.shards += 1
        for r in got:
            if r["error"]:
                report.failed.append((r["path"], r["error"]))
            elif r["views"]:
                report.embedded += 1
                report.views += r["views"]
                report.notes += [(r["path"], note) for note in r["notes"] or ()]
                if report.first_embedding_s is None:
                    report.first_embedding_s = time.perf_counter() - start
            else:
                report.reused += 1
            if spec.score and r["scored"]:
                report.scored.add(r["path"])
            if on_file:
                on_file(r["path"], r["error"])

    try:
        _stream(spec, targets, known, shards, seen, options, finish, on_note,
                {"encoders": encoders, "names": list(shards), "parts": str(parts)})
    finally:
        with contextlib.suppress(OSError):
            parts.rmdir()  # empty once every shard is renamed out of it; else the next run removes it
    return report


def manifest_rows(batch) -> list[dict]:
    """The rows of a batch the actors returned: manifests (MANIFEST), never embeddings."""
    if tuple(batch.schema.names) != MANIFEST:
        raise StoreError(f"internal: the Ray workers returned {batch.schema.names}, not {list(MANIFEST)}")
    return batch.to_pylist()


def _stream(spec: ModelSpec, targets: list[Group], known: list[set[str]], shards: dict[str, list[str]],
            seen: list[bool], options: RayOptions, finish: Callable[[str, list[dict]], None],
            on_note: Callable[[str], None] | None, output: dict) -> None:
    """Run the Ray Data pipeline over the shards' files, the actors writing the rows as parts where `output`
    says (ClipWorker's encoders, names, parts); `finish(shard, manifests)` as each shard's files are all in parts,
    `on_note(text)` on what the user should know before it (the worker pool). A failure in a worker or node
    raises its one-line CityClfError (ray_cluster.cluster_error)."""
    ray = require_ray()
    import ray.data

    started = connect(options.address)
    try:
        ctx = ray.data.DataContext.get_current()
        for flag in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start"):
            if hasattr(ctx, flag):
                setattr(ctx, flag, False)
        pool = actor_pool(ray, options.workers, options.num_gpus_per_worker)
        if pool.note and on_note:
            on_note(pool.note)
        device = options.device if options.device != "auto" else ("cuda" if pool.gpus else "cpu")
        names = list(shards)
        ds = ray.data.from_arrow(file_blocks(shards, seen, cluster_cpus(ray)))
        # a decoding task reserves memory for a large image and its views; as Ray Data fuses stages with
        # equal resources, this also keeps decoding in its own CPU tasks when the CLIP workers are CPU
        # actors (fused, it would run serially inside them)
        ds = ds.map_batches(prepare_batch, batch_format="pyarrow", batch_size=PREPARE_BATCH, num_cpus=1,
                            memory=DECODE_MEMORY, fn_kwargs={"views": [(t.policy, t.encoder.image_size) for t in targets],
                                       "known_ref": ray.put([known_array(k) for k in known]),
                                       "max_pixels": options.max_pixels, "driver_host": socket.gethostname()})
        # a batch no larger than a shard: a shard is stored as soon as its files are; a worker is handed two tasks at
        # most (one running, one arriving), so the rest waits in Ray Data's queue for workers that start later
        ds = ds.map_batches(ClipWorker, batch_format="pyarrow", batch_size=min(ACTOR_BATCH, options.files_per_shard),
                            compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size,
                                                               max_tasks_in_flight_per_actor=2),
                            num_gpus=pool.gpus or None, num_cpus=pool.cpus,
                            fn_constructor_kwargs={"spec": spec, "device": device, "batch_size": options.batch_size,
                                                   "expected": [(t.encoder.identity, t.clip.key) for t in targets],
                                                   **output})
        waiting: dict[int, list[dict]] = defaultdict(list)
        try:
            with _quiet_ray_data():
                for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for r in manifest_rows(batch):
                        got = waiting[r["shard"]]
                        got.append(r)
                        if len(got) == len(shards[names[r["shard"]]]):
                            finish(names[r["shard"]], waiting.pop(r["shard"]))
        except CityClfError:  # the driver's own (the store, a shard): as it is
            raise
        except Exception as e:  # noqa: BLE001  (Ray's errors: the one line they stand for, if they carry one)
            clear = cluster_error(e)
            if clear is None:
                raise
            raise clear from None
        if waiting:
            raise StoreError(f"internal: {len(waiting)} shard(s) came back incomplete from Ray; rerun to finish them")
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Within it, Ray Data's progress lines are off, and its traceback of a failed run (the driver says it in
    one line)."""
    import logging

    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR,
              "ray.data.exceptions": logging.CRITICAL,
              "ray.data._internal.execution.streaming_executor_state": logging.CRITICAL}
    old = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in old.items():
            logging.getLogger(name).setLevel(level)


def file_blocks(shards: dict[str, list[str]], seen: list[bool], cpus: float = 1.0) -> list:
    """The files as Arrow tables (path, shard index, seen by the driver): at most MAX_BLOCKS of them (a few Ray
    objects whatever the number of files), of BLOCK_FILES files or fewer when that leaves `cpus` (the cluster's)
    four blocks each."""
    import pyarrow as pa

    paths = [p for files in shards.values() for p in files]
    index = np.repeat(np.arange(len(shards), dtype=np.int32), [len(f) for f in shards.values()])
    n = len(paths)
    step = max(1, -(-n // MAX_BLOCKS), min(BLOCK_FILES, -(-n // int(4 * max(cpus, 1)))))
    return [pa.table({"path": pa.array(paths[i:i + step], pa.string()), "shard": pa.array(index[i:i + step]),
                      "seen": pa.array(seen[i:i + step], pa.bool_())}) for i in range(0, n, step)]


def known_array(contents: set[str]) -> np.ndarray:
    """Contents (sha256 hex) as one sorted byte-string array: put in Ray's object store once, read in place
    by every decoding worker on a node (no copy per worker)."""
    width = max((len(c) for c in contents), default=1)
    arr = np.array(list(contents), dtype=f"S{width}")
    arr.sort()
    return arr


def has_content(arr: np.ndarray, content: str) -> bool:
    """Whether the sorted `arr` (known_array) holds `content`."""
    key = content.encode()
    if not len(arr) or len(key) > arr.dtype.itemsize:
        return False
    i = int(np.searchsorted(arr, key))
    return i < len(arr) and arr[i] == key


# ---------------------------------------------------------------- the stages (run in Ray workers)


_KNOWN: dict[str, list[np.ndarray]] = {}


def _known(ref) -> list[np.ndarray]:
    import ray

    if not isinstance(ref, ray.ObjectRef):
        return ref
    key = ref.hex()
    if key not in _KNOWN:
        _KNOWN.clear()
        _KNOWN[key] = ray.get(ref)
    return _KNOWN[key]


def missing_on_node(path: str) -> ClusterError:
    return ClusterError(f"Ray node {node_name()}: {path} is not there, though the driver sees it; the images must "
                        "be at the same path on every node (a shared or identically mounted file system)")


def prepare_batch(batch, views: list[tuple[CropPolicy, int]], known_ref, max_pixels: int,
                  driver_host: str | None = None):
    """CPU stage: per file, stat, hash and (for the targets lacking its content) decoded uint8 views. A file the
    driver saw and a node on another machine does not: a ClusterError (that node lacks the shared file system),
    not a failed row; on the driver's machine it is a failed row, as in a local run (removed meanwhile)."""
    import pyarrow as pa

    known = _known(known_ref)
    planners = [(functools.partial(_plan, policy=p, clip_size=s), s, "") for p, s in views]
    out: dict[str, list] = defaultdict(list)
    for path, shard, seen in zip(*(batch.column(c).to_pylist() for c in ("path", "shard", "seen"))):
        if seen and socket.gethostname() != driver_host and not os.path.lexists(path):
            raise missing_on_node(path)
        item = read_file(Prepared(0, path), planners, lambda c: [i for i, k in enumerate(known)
                                                                 if not has_content(k, c)],
                         max_pixels, share=False)  # each pass's views go to its own column
        for k in ("path", "size", "mtime_ns", "content", "width", "height", "error"):
            out[k].append(getattr(item, k))
        out["shard"].append(shard)
        out["notes"].append(item.notes)
        for i in range(len(views)):
            v = item.views.get(i)
            out[f"n_{i}"].append(0 if v is None else int(v.shape[0]))
            out[f"views_{i}"].append(None if v is None else v.numpy().tobytes())
    types = {"size": pa.int64(), "mtime_ns": pa.int64(), "width": pa.int32(), "height": pa.int32(),
             "notes": pa.list_(pa.string()), "shard": pa.int32()}
    return pa.table({k: pa.array(v, type=types.get(k, pa.binary() if k.startswith("views_") else
                                                 pa.int32() if k.startswith("n_") else pa.string()))
                     for k, v in out.items()})


def _plan(height: int, width: int, content: str, policy: CropPolicy, clip_size: int):
    return plan_crops(height, width, policy, clip_size)


class ClipWorker:
    """Actor stage: CLIP on the views of a batch of files, then every head of that CLIP pass; the rows written as
    parts of their shards (parquet.write_part) in `parts`; a MANIFEST row per file returned."""

    def __init__(self, spec: ModelSpec, device: str, expected: list[tuple[str, str]], batch_size: int | None,
                 encoders: list[dict], names: list[str], parts: str):
        # a constructor that raises makes Ray print the actor's traceback on the driver's terminal, and retry;
        # raised from the first batch instead, the failure reaches the driver as this one error
        self.failed: ClusterError | None = None
        self.encoders, self.names, self.parts = encoders, names, parts
        try:
            self._start(spec, device, expected, batch_size)
        except ClusterError as e:
            self.failed = e

    @worker_errors
    def _start(self, spec: ModelSpec, device: str, expected: list[tuple[str, str]], batch_size: int | None):
        if not os.path.isdir(self.parts):
            raise ClusterError(f"Ray node {node_name()}: the shard folder {os.path.dirname(self.parts)} is not "
                               "there (the driver made it); it must be a folder every node sees at the same path "
                               "(shared storage): give one with --shard-dir")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"this worker was given a GPU, but its PyTorch {torch.__version__} sees no CUDA; "
                              "install a CUDA build of torch on the GPU nodes, or run with --num-gpus-per-worker 0")
        model, self.targets = spec.load(device)
        got = [(t.encoder.identity, t.clip.key) for t in self.targets]
        if got != [tuple(x) for x in expected]:
            raise StoreError(f"the CLIP on this Ray node ({got}) is not the driver's ({expected}); install the "
                             "same CLIP and heads on every node")
        self.spec = spec
        self.timers = [TimedEncoder(t.encoder) for t in self.targets]
        self.batch_size = batch_size or default_batch_size(self.targets[0].encoder.device)

    @worker_errors
    def __call__(self, batch):
        import pyarrow as pa

        if self.failed is not None:
            raise self.failed

        cols = batch.to_pydict()
        n = batch.num_rows
        scores: list[list[dict]] = [[] for _ in range(n)]
        cells: list[list[dict]] = [[] for _ in range(n)]  # each file's embeddings, as shard cells
        for i, (t, timer) in enumerate(zip(self.targets, self.timers)):
            S = t.encoder.image_size
            chunks = ChunkedEncoder(timer, self.batch_size)
            embs: dict[int, torch.Tensor] = {}
            for r in range(n):
                k = cols[f"n_{i}"][r]
                if k:
                    views = torch.frombuffer(bytearray(cols[f"views_{i}"][r]), dtype=torch.uint8).reshape(k, 3, S, S)
                    embs.update(chunks.add(r, views))
            embs.update(chunks.flush())
            for r, emb in embs.items():
                cells[r].append(parquet.embedding_cell(t.encoder.identity, t.clip.key, emb.numpy()))
            if self.spec.score and embs and t.bindings:
                order = sorted(embs)
                for s in head_scores(t.bindings, torch.cat([embs[r] for r in order]),
                                     [int(embs[r].shape[0]) for r in order], self.spec.combine):
                    for j, r in enumerate(order):
                        res = s.result(j)
                        score, label, extra = res.kind.to_stored(res)
                        scores[r].append({"head": res.head, "combine": self.spec.combine, "score": score,
                                          "label": label, "probs": json.dumps(extra) if extra is not None else None,
                                          "kind": res.arch})
        by_shard: dict[int, list[dict]] = defaultdict(list)
        for r in range(n):
            by_shard[cols["shard"][r]].append({
                "path": cols["path"][r], "size": cols["size"][r], "mtime_ns": cols["mtime_ns"][r],
                "content": cols["content"][r], "width": cols["width"][r], "height": cols["height"][r],
                "status": "failed" if cols["error"][r] else "ok", "error": cols["error"][r],
                "notes": cols["notes"][r] or [], "embeddings": cells[r], "scores": scores[r]})
        for shard, rows in by_shard.items():
            parquet.write_part(self.parts, self.names[shard], rows, self.encoders)
        heads = {b.name for t in self.targets for b in t.bindings}
        views = [sum(cols[f"n_{i}"][r] for i in range(len(self.targets))) for r in range(n)]
        scored = [bool(heads) and {s["head"] for s in scores[r]} == heads for r in range(n)]
        return pa.table({"path": pa.array(cols["path"], pa.string()), "shard": pa.array(cols["shard"], pa.int32()),
                         "error": pa.array(cols["error"], pa.string()),
                         "notes": pa.array(cols["notes"], pa.list_(pa.string())),
                         "views": pa.array(views, pa.int32()), "scored": pa.array(scored, pa.bool_())})


__all__ = ["ClipWorker", "MANIFEST", "RayOptions", "RayReport", "file_blocks", "has_content", "known_array",
           "manifest_rows", "prepare_batch", "run_job"]
