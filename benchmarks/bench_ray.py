"""Benchmark: --engine ray against the local engine on one machine, side by side in one run.

Same files, same CLIP and head, a fresh store for each run, in the order local, ray,
ray, local (so a change in the machine's load during the run falls on both engines):

* local: dataset.embed_files -- decoding in 2 threads, CLIP in this process;
* ray: engines.ray_data.run_job on a Ray started for that run with 2 CPUs (cold:
  `ray.init` is inside the timing), or with `--two-nodes` on a local two-node Ray
  cluster (two raylets on this machine, 1 CPU each).

For each run: total seconds, seconds to the first embedding in the store, and the
steady-state rate (files stored after the first one, over the time after it); then
Ray / local for each. Ray's fixed overhead is read as its time to the first stored
embedding.

    python benchmarks/bench_ray.py --quick            # 300 small files, tiny CLIP
    python benchmarks/bench_ray.py --files 2000,20000  # small files, tiny CLIP
    python benchmarks/bench_ray.py --vit-l --files 200 # ViT-L/14-shaped CLIP (224 px, random weights)

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
os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # as the CLI's driver: no core-worker ERROR lines

from bench_pipeline import build_clip, machine  # noqa: E402

from cityclf_core.dataset import clip_passes, embed_files  # noqa: E402
from cityclf_core.dataset.passes import ModelSpec  # noqa: E402
from cityclf_core.engines.ray_data import RayOptions, run_job  # noqa: E402
from cityclf_core.loading.models import load_scoring_model  # noqa: E402
from cityclf_core.samples import build_head, build_tiny_clip, draw_illustration  # noqa: E402
from cityclf_core.store import EmbeddingStore  # noqa: E402


class Clock:
    """on_file callback: when the first file was in the store, and how many were by then (from `start`)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.done = 0
        self.first: float | None = None
        self.done_at_first = 0

    def __call__(self, path, error):
        self.done += error is None
        if self.first is None and self.done:
            self.first = time.perf_counter() - self.start
            self.done_at_first = self.done

    def result(self, n: int) -> dict:
        wall = time.perf_counter() - self.start
        after = wall - self.first
        steady = (n - self.done_at_first) / after if after > 0 and n > self.done_at_first else float("nan")
        return {"wall": wall, "first": self.first, "steady": steady}  # nan: all came at once (one shard)


def write_small_files(folder: Path, count: int) -> list[str]:
    """`count` small illustrations (48..120 px), PNG and JPEG in turn."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = folder / f"{i // 1000:03d}" / (f"{i:06d}.jpg" if i % 2 else f"{i:06d}.png")
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(draw_illustration(48 + 9 * (i % 9), 48 + 8 * (i % 10), i)).save(p, quality=90)
        paths.append(str(p))
    return paths


def build_vit_l(folder: Path) -> Path:
    """CLIPVisionModelWithProjection shaped as ViT-L/14 (224 px): hidden 1024, 24 layers, projection 768."""
    return build_tiny_clip(folder, image_size=224, patch_size=14, hidden_size=1024, layers=24, heads=16,
                           projection_dim=768, intermediate_size=4096)


def run_local(db: Path, paths: list[str], clip: Path, head: Path) -> dict:
    clock = Clock()
    model = load_scoring_model([str(head)], clip=str(clip), device="cpu", dtype="fp32")
    with EmbeddingStore(db) as store:
        report = embed_files(store, clip_passes(model), paths, workers=2, on_file=clock)
    assert report.embedded == len(paths), report.summary()
    return clock.result(len(paths))


def run_ray(db: Path, paths: list[str], clip: Path, head: Path, files_per_shard: int, two_nodes: bool) -> dict:
    import ray

    clock = Clock()
    cluster = None
    if two_nodes:  # two raylets on this machine, 1 CPU each; started inside the timing, as ray.init is
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        with EmbeddingStore(db) as store:
            report = run_job(store, ModelSpec(models=(str(head),), clip=str(clip), dtype="fp32"), paths,
                             f"{db}.shards", RayOptions(files_per_shard=files_per_shard, device="cpu"),
                             on_file=clock)
        out = clock.result(len(paths))
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    assert report.embedded == len(paths), report.summary()
    return out


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
    ap.add_argument("--files", default="2000", help="numbers of image files, comma-separated (default 2000)")
    ap.add_argument("--quick", action="store_true", help="300 small files, tiny CLIP: a run of a few minutes")
    ap.add_argument("--vit-l", action="store_true", help="a ViT-L/14-shaped CLIP (224 px, random weights) instead of "
                                                         "a tiny one")
    ap.add_argument("--files-per-shard", type=int, default=100)
    ap.add_argument("--two-nodes", action="store_true", help="Ray on a local two-node cluster (2 raylets, 1 CPU "
                                                             "each) instead of one Ray with 2 CPUs")
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
    import gc

    sizes = [300] if args.quick else [int(x) for x in args.files.split(",")]
    if args.two_nodes:  # the cluster's files (and its address file) under this run's folder, not /tmp/ray
        (work / "ray").mkdir()
        os.environ["RAY_TMPDIR"] = str(work / "ray")
    clip_name = "ViT-L/14-shaped CLIP (224 px, 24 layers)" if args.vit_l else "tiny CLIP (32 px, 2 layers)"
    ray_name = "local two-node Ray cluster (2 raylets, 1 CPU each)" if args.two_nodes else "a local Ray with 2 CPUs"
    print(f"cityclf Ray engine benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{machine()}, load average {os.getloadavg()[0]:.2f} before the run", flush=True)
    clip = build_vit_l(work / "clip") if args.vit_l else build_tiny_clip(work / "clip")
    head = build_head(work / "score.safetensors", "score", seed=1, features=768)
    print(f"\n{clip_name}, whole image, fp32 CPU, one score head; Ray: {ray_name}, {args.files_per_shard} files "
          "per shard; order local, ray, ray, local\n")
    print("| files | engine | run | total s | first embedding stored, s | steady files/s |")
    print("|---|---|---|---|---|---|", flush=True)
    summary = []
    for n in sizes:
        paths = write_small_files(work / f"files{n}", n)
        got: dict[str, list[dict]] = {"local": [], "ray": []}
        for i, engine in enumerate(("local", "ray", "ray", "local")):
            db = work / f"{engine}-{n}-{i}.db"
            r = (run_local(db, paths, clip, head) if engine == "local" else
                 run_ray(db, paths, clip, head, args.files_per_shard, args.two_nodes))
            got[engine].append(r)
            print(f"| {n:,} | {engine} | {i + 1} | {r['wall']:.1f} | {r['first']:.1f} | {r['steady']:.3g} |",
                  flush=True)
            shutil.rmtree(f"{db}.shards", ignore_errors=True)
            gc.collect()
        mean = {e: {k: sum(r[k] for r in rs) / len(rs) for k in ("wall", "first", "steady")} for e, rs in got.items()}
        summary.append((n, mean))
    print("\n| files | total s local / ray | Ray/local total | first stored s local / ray | steady files/s "
          "local / ray | Ray/local steady |")
    print("|---|---|---|---|---|---|")
    for n, m in summary:
        lo, ra = m["local"], m["ray"]
        print(f"| {n:,} | {lo['wall']:.1f} / {ra['wall']:.1f} | {ra['wall'] / lo['wall']:.2f}x | {lo['first']:.1f} / "
              f"{ra['first']:.1f} | {lo['steady']:.3g} / {ra['steady']:.3g} | {ra['steady'] / lo['steady']:.2f}x |")
    print(f"\n(means of the two runs of each engine) load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
