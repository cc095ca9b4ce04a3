"""Benchmark: embedding image files with --engine ray (a local Ray, 2 CPUs) against the single-process path.

Same files, same CLIP and head, a fresh store for each:

* local: dataset.embed_files -- decoding and cropping in 2 threads, CLIP in this
  process (torch with all its threads), the store written as chunks finish;
* ray: engines.ray_data.run_job on a local Ray started here with 2 CPUs -- one
  CPU for the decoding tasks, one CLIP actor (Ray gives it one torch thread),
  Parquet shards of --files-per-shard files written and imported by this process.

Prints images/s, the time to the first embedding in the store (the Ray run from
a cold start, `ray.init` included), and images/s over the second half of the
files (past the start-up costs).

    python benchmarks/bench_ray.py                 # small CLIP, 192 files
    python benchmarks/bench_ray.py --vit-l --files 48   # ViT-L/14-336 (random weights): CLIP-bound

Start-up against dataset size (`--startup 10000,100000,1000000`): that many empty
files listed, and the driver's seconds and memory from the call to the moment Ray
Data starts its first task (a local Ray already running; each size in a fresh
process): listing, stat and store look-ups, shards, the file list as Ray blocks and
the store's known contents in the object store. `--old-blocks` also times the way
before (one `from_items` block per 4 files) on the same list.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from bench_dataset import write_files  # noqa: E402
from bench_pipeline import build_clip, machine  # noqa: E402

from cityclf_core.dataset import clip_passes, embed_files  # noqa: E402
from cityclf_core.dataset.passes import ModelSpec  # noqa: E402
from cityclf_core.engines.ray_data import RayOptions, run_job  # noqa: E402
from cityclf_core.loading.models import load_scoring_model  # noqa: E402
from cityclf_core.samples import build_head  # noqa: E402
from cityclf_core.store import EmbeddingStore  # noqa: E402


class Clock:
    """on_file callback: when the first file, and the first `mark` files, were in the store (from `start`).

    With `mark` = half the files, (files - mark) / (wall - at_mark) is the rate over the second half: past
    the start-up costs, while the pipeline is full (Ray Data works ahead of the shard being written).
    """

    def __init__(self, mark: int):
        self.start = time.perf_counter()
        self.mark, self.done = mark, 0
        self.first: float | None = None
        self.at_mark: float | None = None

    def __call__(self, path, error):
        now = time.perf_counter() - self.start
        self.done += error is None
        if self.first is None and self.done:
            self.first = now
        if self.at_mark is None and self.done >= self.mark:
            self.at_mark = now


def run_local(work: Path, paths: list[str], clip: Path, head: Path, mark: int) -> dict:
    clock = Clock(mark)
    model = load_scoring_model([str(head)], clip=str(clip), device="cpu", dtype="fp32")
    with EmbeddingStore(work / "local.db") as store:
        report = embed_files(store, clip_passes(model), paths, workers=2, on_file=clock)
    wall = time.perf_counter() - clock.start
    assert report.embedded == len(paths), report.summary()
    return {"wall": wall, "first": clock.first, "start": 0.0, "at_mark": clock.at_mark}


def run_ray(work: Path, paths: list[str], clip: Path, head: Path, files_per_shard: int, name: str, mark: int) -> dict:
    import ray

    clock = Clock(mark)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    started = time.perf_counter() - clock.start
    try:
        with EmbeddingStore(work / f"{name}.db") as store:
            report = run_job(store, ModelSpec(models=(str(head),), clip=str(clip), dtype="fp32"), paths,
                             work / f"{name}.db.shards", RayOptions(files_per_shard=files_per_shard, device="cpu"),
                             on_file=clock)
        wall = time.perf_counter() - clock.start
    finally:
        ray.shutdown()
    assert report.embedded == len(paths), report.summary()
    return {"wall": wall, "first": clock.first, "start": started, "at_mark": clock.at_mark}


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class FirstTask(Exception):
    pass


def startup_one(root: Path, n: int, old_blocks: bool) -> dict:
    """In this process: list `n` files under `root`, then run_job until Ray Data would start its first task."""
    import ray
    import ray.data

    from cityclf_core.cli.common import Problems, listed_files
    from cityclf_core.engines import ray_data

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    clip = build_clip(root / "clip", quick=True)
    folders = [str(root / "files" / f"d{i}") for i in range(max(1, n // FOLDER))]
    out = {"n": n}
    try:
        base = rss_mb()
        t = time.perf_counter()
        paths = listed_files(folders, Problems())
        out["list_s"], out["list_mb"] = time.perf_counter() - t, rss_mb() - base
        base = rss_mb()
        assert len(paths) == n, len(paths)
        seen = {}

        def started(self, *a, **k):  # the pipeline is built: Ray Data would start tasks now
            seen["s"], seen["rss"] = time.perf_counter() - t, rss_mb() - base
            raise FirstTask

        ray.data.Dataset.iter_batches = started
        t = time.perf_counter()
        with EmbeddingStore(root / f"startup-{n}.db") as store:
            try:
                ray_data.run_job(store, ModelSpec(clip=str(clip), dtype="fp32"), paths, root / f"s{n}.shards",
                                 RayOptions(device="cpu"))
            except FirstTask:
                pass
        out["driver_s"], out["rss_mb"] = seen["s"], seen["rss"]
        if old_blocks:
            items = [{"path": p, "shard": "shard-0123456789abcdef0123"} for p in paths]
            t = time.perf_counter()
            ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // 4)))
            out["old_blocks_s"] = time.perf_counter() - t
    finally:
        ray.shutdown()
    return out


FOLDER = 10_000


def startup(sizes: list[int], old_blocks: bool) -> None:
    import json
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="cityclf-bench-startup-"))
    try:
        print(f"cityclf Ray engine start-up benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
              f"UTC, {machine()}, load average {os.getloadavg()[0]:.2f} before the run")
        for i in range(max(1, max(sizes) // FOLDER)):
            folder = work / "files" / f"d{i}"
            folder.mkdir(parents=True)
            for j in range(min(FOLDER, max(sizes))):
                (folder / f"{j:05d}.png").touch()
        print("\n| listed files | listing s | listing MB | then, to Ray Data's first task: driver s | driver MB |"
              + (" before: from_items, a block per 4 files, s |" if old_blocks else ""))
        print("|---|---|---|---|---|" + ("---|" if old_blocks else ""))
        for n in sizes:
            got = subprocess.run([sys.executable, __file__, "--startup-one", str(n), "--work", str(work)]
                                 + (["--old-blocks"] if old_blocks and n <= 100_000 else []),
                                 capture_output=True, text=True, check=True)
            r = json.loads(got.stdout.strip().splitlines()[-1])
            print(f"| {n:,} | {r['list_s']:.1f} | {r['list_mb']:.0f} | {r['driver_s']:.1f} | {r['rss_mb']:.0f} |"
                  + (f" {r['old_blocks_s']:.1f} |" if "old_blocks_s" in r else " - |" if old_blocks else ""),
                  flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--startup", metavar="N,N,...", help="start-up at these numbers of listed (empty) files")
    ap.add_argument("--old-blocks", action="store_true", help="with --startup: also time one from_items block per "
                                                              "4 files (up to 100,000 files)")
    ap.add_argument("--startup-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--files", type=int, default=192, help="image files (768..1344 px JPEG/PNG; default 192)")
    ap.add_argument("--vit-l", action="store_true", help="a ViT-L/14-336-shaped CLIP (random weights) instead of "
                                                         "a small one")
    ap.add_argument("--files-per-shard", type=int, default=16)
    args = ap.parse_args()
    if args.startup_one is not None:
        import json

        print(json.dumps(startup_one(Path(args.work), args.startup_one, args.old_blocks)))
        return
    if args.startup:
        startup([int(x) for x in args.startup.split(",")], args.old_blocks)
        return
    work = Path(tempfile.mkdtemp(prefix="cityclf-bench-ray-"))
    try:
        report(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, work: Path) -> None:
    print(f"cityclf Ray engine benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{machine()}, load average {os.getloadavg()[0]:.2f} before the run")
    clip = build_clip(work / "clip", quick=not args.vit_l)
    head = build_head(work / "score.safetensors", "score", seed=1)
    paths = write_files(work / "files", args.files)
    half = len(paths) // 2
    results = {"local": run_local(work, paths, clip, head, half)}
    results["ray"] = run_ray(work, paths, clip, head, args.files_per_shard, "ray", half)
    n = len(paths)
    local = results["local"]
    print(f"\n{n} files, {'ViT-L/14-336' if args.vit_l else 'small CLIP (112 px, 4 layers)'}, whole image, fp32 CPU; "
          f"Ray: 2 CPUs (decoding tasks + 1 CLIP actor), {args.files_per_shard} files per shard\n")
    print("| engine | images/s | vs local | first embedding in the store | of which starting Ray "
          "| images/s, second half of the files | vs local |")
    print("|---|---|---|---|---|---|---|")
    local_after = (n - half) / (local["wall"] - local["at_mark"])
    for name, r in results.items():
        ips = n / r["wall"]
        after = (n - half) / (r["wall"] - r["at_mark"])
        print(f"| {name} | {ips:.2f} | {ips / (n / local['wall']):.2f}x | {r['first']:.1f} s | {r['start']:.1f} s "
              f"| {after:.2f} | {after / local_after:.2f}x |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
