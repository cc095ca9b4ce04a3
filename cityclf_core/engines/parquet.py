"""Parquet shards: what an engine's workers computed for a group of files, and importing them into a store.

One row per file:

    path, size, mtime_ns, content (sha256), width, height, status ('ok' | 'failed'), error, notes [text]
    embeddings  [{clip (identity), policy (store key), views, dim, data (float32 little-endian [views, dim])}]
    scores      [{head, combine, score, label, probs (the kind's extra as JSON, or null), kind}]

The schema's metadata (key b"cityclf") names the CLIPs (identity, name, source,
image size, embedding size), so a shard can be imported without loading a model.

A shard is `NAME.parquet` in the shard folder: one Parquet file (write_shard), or a
folder of Parquet parts (a Parquet dataset, as pyarrow, pandas, DuckDB or Spark read
one), which is how engine workers write it: each worker writes the rows it finished as
a part (write_part, itself written under a temporary name and renamed) into the run's
hidden parts folder, and the driver, once every file of a shard is in a part, renames
the shard's folder to `NAME.parquet` (finish_shard). Either way a name `*.parquet` is
always whole; the store records each import in the same transaction as its rows, so a
shard is imported wholly or not at all, and importing one twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..confined import naming
from ..errors import ConfigError, StoreError
from ..store import Store, StoredScore

SHARD_VERSION = 1
SUFFIX = ".parquet"
TEMP_PREFIX = ".partial-"
PARTS_SUFFIX = ".parts"  # a run's parts folder: TEMP_PREFIX + run + PARTS_SUFFIX, removed by remove_partial


def require_pyarrow():
    """The `pyarrow` module, or a ConfigError saying how to get it (the CLI exits 2 on it)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise ConfigError('reading and writing Parquet shards needs pyarrow, which is not installed here; from a '
                          'checkout: pip install -e ".[ray]" (or pip install pyarrow)') from None
    return pa


def shard_schema(encoders: Sequence[dict]):
    """The Arrow schema of a shard; `encoders` as in the metadata (identity, name, source, image_size, embed_dim)."""
    pa = require_pyarrow()
    embedding = pa.struct([("clip", pa.string()), ("policy", pa.string()), ("views", pa.int32()),
                           ("dim", pa.int32()), ("data", pa.binary())])
    score = pa.struct([("head", pa.string()), ("combine", pa.string()), ("score", pa.float64()),
                       ("label", pa.string()), ("probs", pa.string()), ("kind", pa.string())])
    meta = {"version": SHARD_VERSION, "encoders": list(encoders)}
    return pa.schema([
        ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("content", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()), ("status", pa.string()), ("error", pa.string()),
        ("notes", pa.list_(pa.string())), ("embeddings", pa.list_(embedding)), ("scores", pa.list_(score)),
    ], metadata={b"cityclf": json.dumps(meta).encode()})


def shard_name(signature: str, files: Iterable[tuple[str, int | None, int | None]]) -> str:
    """A stable name for the shard of these (path, size, mtime_ns) files under this job signature."""
    h = hashlib.sha1(signature.encode())
    for path, size, mtime in files:
        h.update(f"\0{path}\0{size}\0{mtime}".encode())
    return f"shard-{h.hexdigest()[:20]}"


def embedding_cell(clip: str, policy: str, emb: np.ndarray) -> dict:
    arr = np.ascontiguousarray(emb, dtype="<f4")
    return {"clip": clip, "policy": policy, "views": int(arr.shape[0]), "dim": int(arr.shape[1]),
            "data": arr.tobytes()}


def write_shard(folder: str | os.PathLike, name: str, rows: list[dict], encoders: Sequence[dict]) -> Path:
    """Write `rows` (dicts with the schema's columns) as folder/name.parquet, atomically."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = require_pyarrow().Table.from_pylist(rows, schema=shard_schema(encoders))
    final = folder / f"{name}{SUFFIX}"
    tmp = folder / f"{TEMP_PREFIX}{name}.{os.getpid()}.tmp"  # never *.parquet until whole
    try:
        with naming(final), open(tmp, "wb") as f:  # a full disk: an OSError naming the shard
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def parts_folder(folder: str | os.PathLike, run: str) -> Path:
    """Where the workers of run `run` write the parts of shards not yet whole (inside the shard folder, hidden)."""
    return Path(folder) / f"{TEMP_PREFIX}{run}{PARTS_SUFFIX}"


def write_part(parts: str | os.PathLike, shard: str, rows: list[dict], encoders: Sequence[dict]) -> Path:
    """Write some of `shard`'s rows as a part in parts/shard/, atomically; the part's name follows from its files,
    so a batch written again (a retried task) replaces its part instead of adding one."""
    h = hashlib.sha1("\0".join(r["path"] for r in rows).encode()).hexdigest()[:20]
    (Path(parts) / shard).mkdir(exist_ok=True)  # not `parts` itself: a run's, made by its driver (gone: an error)
    return write_shard(Path(parts) / shard, f"part-{h}", rows, encoders)


def finish_shard(folder: str | os.PathLike, parts: str | os.PathLike, shard: str) -> Path:
    """Make the parts in parts/shard/ the shard folder/shard.parquet (one rename; a shard of that name already
    there, imported before, is replaced)."""
    src, final = Path(parts) / shard, Path(folder) / f"{shard}{SUFFIX}"
    remove_partial(src)  # a part's temporary file a retried task left
    old = Path(parts) / f"{shard}.old"
    if final.exists():
        os.replace(final, old)
    os.replace(src, final)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()
    return final


def read_shard(path: str | os.PathLike):
    """(rows as dicts, metadata) of a shard (a file, or a folder of parts); StoreError naming it if it is not one."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[b"cityclf"])
    except (OSError, KeyError, ValueError) as e:
        raise StoreError(f"{path} is not a cityclf shard ({e}); move it out of the shard folder") from None
    if int(meta.get("version", 0)) > SHARD_VERSION:
        raise StoreError(f"{path} was written by a newer cityclf (shard version {meta['version']}); upgrade cityclf")
    return table.to_pylist(), meta


@dataclass
class Imported:
    name: str
    rows: list[dict]  # the shard's rows, for reporting (status, error, notes, scores)


def import_shard(store: Store, path: str | os.PathLike) -> Imported:
    """Put one shard's embeddings, files and scores into `store` in one transaction, and record it."""
    path = Path(path)
    name = path.name[: -len(SUFFIX)]
    rows, meta = read_shard(path)
    ids = {e["identity"]: store.register_encoder(e["identity"], e["name"], e["source"], int(e["image_size"]),
                                                 int(e["embed_dim"])).id
           for e in meta["encoders"]}
    scores = []
    with store.transaction():
        for r in rows:
            if r["status"] != "ok":
                store.put_file(r["path"], r["size"], r["mtime_ns"], None, status="failed", error=r["error"])
                continue
            for e in r["embeddings"] or ():
                if e["clip"] not in ids:
                    raise StoreError(f"{path}: embeddings of CLIP {e['clip']}, which its metadata does not name")
                emb = np.frombuffer(e["data"], dtype="<f4").reshape(e["views"], e["dim"])
                store.put_embedding(r["content"], ids[e["clip"]], e["policy"], emb)
            store.put_file(r["path"], r["size"], r["mtime_ns"], r["content"], r["width"], r["height"],
                           notes=r["notes"] or None)
            scores += [(r["path"], s["head"], s["combine"], stored_score(s)) for s in r["scores"] or ()]
        if scores:
            store.put_scores(scores)
        store.record_import(name, len(rows))
    return Imported(name, rows)


def whole_shards(folder: str | os.PathLike) -> list[Path]:
    """The whole shards in `folder` (not a run's parts, nor a shard being renamed into place), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if not p.name.startswith(TEMP_PREFIX))


def pending_shards(store: Store, folder: str | os.PathLike) -> list[Path]:
    """Whole shards in `folder` not yet imported into `store` (a run killed between writing and importing)."""
    done = store.imported_shards()
    return [p for p in whole_shards(folder) if p.name[: -len(SUFFIX)] not in done]


def remove_partial(folder: str | os.PathLike) -> int:
    """Delete temporary files and parts folders a killed run left in `folder`; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(f"{TEMP_PREFIX}*"):
        if p.name.endswith(PARTS_SUFFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
        else:
            continue
        n += 1
    return n


def stored_score(s: dict) -> StoredScore:
    """A shard's score entry as the store keeps it (entries without a kind: a classifier when it has probs)."""
    extra = json.loads(s["probs"]) if s["probs"] else None
    return StoredScore(s["score"], s["label"], extra, s.get("kind") or ("class" if extra else "score"))


__all__ = ["Imported", "SHARD_VERSION", "embedding_cell", "finish_shard", "import_shard", "parts_folder",
           "pending_shards", "read_shard", "remove_partial", "require_pyarrow", "shard_name", "shard_schema",
           "whole_shards", "write_part", "write_shard"]
