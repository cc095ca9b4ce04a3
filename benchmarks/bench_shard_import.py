"""Benchmark: importing Parquet shards into a store (the Ray engine's ceiling once its workers write the shards).

With `--engine ray` the CLIP workers write each shard's rows themselves (Parquet parts
in the shard folder); the driver only renames a finished shard and imports it into
SQLite (engines.parquet.import_shard). This times that import alone, into a fresh
store, on synthetic shards with ViT-L-sized rows: 768-dim float32 embeddings, one view
per file (a whole-image policy) and six (five-crop tiling and the whole image), with
paths and sha256 contents like a real dataset's. Two layouts of the same rows:

* file:  one Parquet file per shard (parquet.write_shard);
* parts: a folder of 64-file parts per shard, as the workers write them (parquet.write_part,
         one part per CLIP batch), renamed into the shard (parquet.finish_shard).

Writing the shards is not timed (the workers do it, in parallel). For comparison,
`driver-writes` times what the driver did per shard before the workers wrote them:
write the shard (parquet.write_shard, from rows already in its memory) and then import
it (Ray's transfer of the rows to the driver not included). Prints the driver's seconds and files/s.

    python benchmarks/bench_shard_import.py                      # 10 shards of 1000 files
    python benchmarks/bench_shard_import.py --shards 4 --files-per-shard 500
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cityclf_core.engines import parquet  # noqa: E402
from cityclf_core.store import EmbeddingStore  # noqa: E402

DIM = 768
PART = 64  # files per part: the CLIP stage's batch (ray_data.ACTOR_BATCH)
ENCODER = {"identity": "bench-vit-l-14-336", "name": "vit-l-14-336", "source": "/models/clip-vit-large-patch14-336",
           "image_size": 336, "embed_dim": DIM}


def rows(shard: int, n: int, views: int, rng: np.random.Generator) -> list[dict]:
    """A shard's rows: n files of `views` ViT-L embeddings each."""
    out = []
    policy = "whole" if views == 1 else "tiles:336:1536:up"
    for i in range(n):
        k = shard * n + i
        path = f"/data/pixiv/illusts/{k // 10000:03d}/{k % 10000 // 100:02d}/{100000000 + 7919 * k}_p0.png"
        emb = rng.standard_normal((views, DIM), dtype=np.float32)
        out.append({"path": path, "size": 1_500_000 + k, "mtime_ns": 1_700_000_000_000_000_000 + k,
                    "content": hashlib.sha256(path.encode()).hexdigest(), "width": 1200, "height": 1700,
                    "status": "ok", "error": None, "notes": [],
                    "embeddings": [parquet.embedding_cell(ENCODER["identity"], policy, emb)], "scores": []})
    return out


def write(folder: Path, layout: str, shards: int, n: int, views: int) -> list[Path]:
    rng = np.random.default_rng(views)
    written = []
    for s in range(shards):
        name, r = f"shard-{views}v-{s:04d}", rows(s, n, views, rng)
        if layout == "file":
            written.append(parquet.write_shard(folder, name, r, [ENCODER]))
            continue
        parts = parquet.parts_folder(folder, "bench")
        parts.mkdir(parents=True, exist_ok=True)
        for i in range(0, n, PART):
            parquet.write_part(parts, name, r[i:i + PART], [ENCODER])
        written.append(parquet.finish_shard(folder, parts, name))
    return written


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else list(path.iterdir())
    return sum(f.stat().st_size for f in files) / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=10)
    ap.add_argument("--files-per-shard", type=int, default=1000)
    ap.add_argument("--views", default="1,6", help="views per file to run, comma-separated")
    ap.add_argument("--layouts", default="file,parts,driver-writes")
    a = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
          f"load average {load:.1f} before")
    with tempfile.TemporaryDirectory() as warm:  # pyarrow's and SQLite's first-use costs, untimed
        for layout in ("file", "parts"):
            with EmbeddingStore(Path(warm) / f"{layout}.db") as store:
                parquet.import_shard(store, write(Path(warm) / layout, layout, 1, PART + 1, 1)[0])
    print("| views per file | shard layout | files | MB of shards | driver s | files/s | MB/s |")
    print("|---|---|---|---|---|---|---|")
    for views in (int(v) for v in a.views.split(",")):
        for layout in a.layouts.split(","):
            tmp = Path(tempfile.mkdtemp(prefix="bench-import-"))
            try:
                old = layout == "driver-writes"
                if old:  # the rows in memory, as the driver had them from Ray
                    rng = np.random.default_rng(views)
                    todo = [rows(s, a.files_per_shard, views, rng) for s in range(a.shards)]
                else:
                    shards = write(tmp / "shards", layout, a.shards, a.files_per_shard, views)
                with EmbeddingStore(tmp / "s.db") as store:
                    t = time.perf_counter()
                    if old:
                        shards = []
                        for s, r in enumerate(todo):
                            shards.append(parquet.write_shard(tmp / "shards", f"shard-{s:04d}", r, [ENCODER]))
                            parquet.import_shard(store, shards[-1])
                    else:
                        for p in shards:
                            parquet.import_shard(store, p)
                    dt = time.perf_counter() - t
                    assert store.stats()["files"] == a.shards * a.files_per_shard
                mb = sum(size_mb(p) for p in shards)
                files = a.shards * a.files_per_shard
                print(f"| {views} | {layout} | {files:,} | {mb:.0f} | {dt:.2f} | {files / dt:,.0f} | {mb / dt:.0f} |",
                      flush=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
