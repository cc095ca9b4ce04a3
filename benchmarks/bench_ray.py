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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=192, help="image files (768..1344 px JPEG/PNG; default 192)")
    ap.add_argument("--vit-l", action="store_true", help="a ViT-L/14-336-shaped CLIP (random weights) instead of "
                                                         "a small one")
    ap.add_argument("--files-per-shard", type=int, default=16)
    args = ap.parse_args()
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
