"""Benchmark: Pixiv popularity at scale -- ingesting sidecars, and training on stored embeddings.

Prints a table, in one run on one machine:

* ingest: N gallery-dl sidecars (no pictures: `pixiv ingest --metadata-only`) into the metadata
  database, rows/s, then an unchanged rerun (nothing is parsed or written again);
* training: a multi-task popularity head on N stored 768-d embeddings (records built in memory, the
  embeddings in an SQLite embedding store), one epoch, with the training embeddings read per batch
  from the store (stream; on N/5 and on N works: the memory must not grow with N) and, for
  comparison, loaded in memory. Each training runs in its own
  process so that its peak RSS is its own; the table shows the RSS after setup (imports, records,
  the store's file index) and the peak during training.

    python benchmarks/bench_pixiv.py                  # 100,000 sidecars and embeddings
    python benchmarks/bench_pixiv.py --n 5000         # quick
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

CLIP = "bench-clip"  # the source the embeddings are recorded under (no CLIP is loaded)
DIM = 768


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# ---------------------------------------------------------------- ingest


def bench_ingest(tmp: Path, n: int) -> dict:
    from cityclf_core.pixiv.ingest import ingest
    from cityclf_core.pixiv.synth import sidecars_only

    data = tmp / "sidecars"
    t0 = time.perf_counter()
    works = sidecars_only(data, n, seed=0)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = ingest(data, require_images=False)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = ingest(data, require_images=False)
    again_s = time.perf_counter() - t0
    assert first.added == n and not first.skipped, first.summary()
    assert again.unchanged == n and again.added == again.updated == 0, again.summary()
    return {"sidecars": n, "works": works, "write_s": write_s, "ingest_s": first_s, "rows_per_s": n / first_s,
            "rerun_s": again_s, "rerun_rows_per_s": n / again_s}


# ---------------------------------------------------------------- training


def make_store(tmp: Path, n: int) -> tuple[Path, Path]:
    """A store with n random 768-d embeddings carrying a planted signal, and the records as .npz."""
    from cityclf_core.store import EmbeddingStore

    rng = np.random.default_rng(0)
    store_path = tmp / "embeddings.db"
    q = rng.uniform(size=n)
    direction = rng.normal(size=DIM).astype(np.float32)
    with EmbeddingStore(store_path) as store:
        row = store.register_encoder("bench-identity", "bench", CLIP, 224, DIM)
        for start in range(0, n, 5000):
            with store.transaction():
                for i in range(start, min(start + 5000, n)):
                    path = f"/bench/{i // 1000:03d}/{i}_p0.png"
                    content = hashlib.sha256(path.encode()).hexdigest()
                    emb = rng.normal(size=(1, DIM)).astype(np.float32) + (2 * q[i] - 1) * direction
                    store.put_file(path, 1, 1, content)
                    store.put_embedding(content, row.id, "whole", emb)
    np.savez(tmp / "records.npz", q=q)
    return store_path, tmp / "records.npz"


def records_for(n: int, q: np.ndarray):
    from cityclf_core.pixiv.records import Records

    rng = np.random.default_rng(1)
    views = np.exp(6 + 2 * q + rng.normal(0, 0.3, n))
    return Records(
        filename=np.array([f"{i}_p0" for i in range(n)], dtype=object),
        image=np.array([f"/bench/{i // 1000:03d}/{i}_p0.png" for i in range(n)], dtype=object),
        illust_id=np.arange(n, dtype=np.int64), user_id=rng.integers(0, n // 20, n).astype(np.int64),
        bookmarks=np.round(views * 0.05 * np.exp(q)), views=np.round(views),
        sanity=rng.choice([2, 4, 6], n), ai=rng.uniform(size=n) < 0.2, tags_count=rng.integers(1, 10, n),
        page_count=np.ones(n, dtype=np.int64), uploaded=np.full(n, 1.6e9), crawled=np.full(n, 1.7e9))


def train_once(store: Path, records_file: Path, stream: str, batch: int, out: Path, n: int) -> dict:
    """Runs in its own process: one epoch of a multi-task head on the first n works; RSS after setup and peak."""
    import torch

    from cityclf_core.pixiv.config import PixivSettings
    from cityclf_core.pixiv.splits import make_split
    from cityclf_core.pixiv.training import fit_and_train, load_data

    torch.set_num_threads(1)
    q = np.load(records_file)["q"]
    rec = records_for(len(q), q).subset(np.arange(n))
    settings = PixivSettings(source="bench", dataset=out, store=store, clip=CLIP, stream=stream, width=256,
                             epochs=1.0, batch=batch, lr=1e-3, max_validation=2000)
    data = load_data(settings, records=rec)
    split = make_split("artist", data.records, 0.1, 0.02, seed=0)
    setup_rss = current_rss_mb()
    setup_peak = peak_rss_mb()
    t0 = time.perf_counter()
    result, _ = fit_and_train(settings, data, split, "popularity-multitask", out, base=f"bench-{stream}",
                              overwrite=True, log=lambda m: None)
    seconds = time.perf_counter() - t0
    return {"stream": stream, "train_works": len(split.train), "batch": batch, "steps": result.steps_done,
            "seconds": seconds, "steps_per_s": result.steps_done / seconds, "setup_rss_mb": setup_rss,
            "setup_peak_mb": setup_peak, "peak_rss_mb": peak_rss_mb(),
            "val_spearman": result.metrics.get("spearman")}


def bench_training(tmp: Path, n: int, batch: int) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    store, records = make_store(tmp, n)
    made = {"embeddings": n, "store_mb": store.stat().st_size / 2**20, "store_s": time.perf_counter() - t0}
    runs = []
    for stream, size in (("yes", n // 5), ("yes", n), ("no", n)):
        cmd = [sys.executable, __file__, "--train-child", str(store), str(records), stream, str(batch),
               str(tmp / f"out-{stream}-{size}"), str(size)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"training ({stream}) failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return made, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="sidecars and embeddings (default 100,000)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--train-child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        store, records, stream, batch, out, size = args.train_child
        print(json.dumps(train_once(Path(store), Path(records), stream, int(batch), Path(out), int(size))))
        return
    from bench_pipeline import machine

    with tempfile.TemporaryDirectory(prefix="bench-pixiv-") as tmp:
        tmp = Path(tmp)
        ing = bench_ingest(tmp, args.n)
        made, runs = bench_training(tmp, args.n, args.batch)
    print(f"# bench_pixiv: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}")
    print()
    print("| ingest | sidecars | seconds | rows/s |")
    print("|---|---|---|---|")
    print(f"| first run ({ing['works']} works) | {ing['sidecars']:,} | {ing['ingest_s']:.1f} | {ing['rows_per_s']:,.0f} |")
    print(f"| unchanged rerun | {ing['sidecars']:,} | {ing['rerun_s']:.1f} | {ing['rerun_rows_per_s']:,.0f} |")
    print(f"(writing the sidecars took {ing['write_s']:.1f} s, not counted)")
    print()
    print(f"training store: {made['embeddings']:,} embeddings of {DIM} floats, {made['store_mb']:.0f} MiB on disk "
          f"(built in {made['store_s']:.0f} s)")
    print()
    print("| training embeddings | train works | batch | steps | seconds | steps/s | RSS after setup MiB "
          "| peak RSS MiB | peak - setup MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        what = "read per batch from the store" if r["stream"] == "yes" else "loaded in memory"
        print(f"| {what} | {r['train_works']:,} | {r['batch']} | {r['steps']} | {r['seconds']:.1f} | "
              f"{r['steps_per_s']:.1f} | {r['setup_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['setup_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
