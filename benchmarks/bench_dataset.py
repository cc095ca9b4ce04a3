"""Benchmark: dataset throughput -- re-scoring from the embedding store, and embedding from files.

Prints a table, in one run on one machine:

* re-scoring: stored embeddings per second per head (SQLite read + head + per-image
  reduction), against what the head's matrix work allows at the rate of a large
  fp32 matrix multiply measured in the same run, and against re-embedding;
* from files: images/s end to end from JPEG/PNG files into the store (decode and
  crop in worker threads, CLIP in the main thread), and how busy the model was
  (time in the CLIP forward / wall time).

    python benchmarks/bench_dataset.py            # ViT-L/14-336 for the embedding part (a few minutes)
    python benchmarks/bench_dataset.py --quick    # a small CLIP: seconds
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from bench_pipeline import build_clip, machine  # noqa: E402

from cityclf_core import CropPolicy, ScoringModel, load_head  # noqa: E402
from cityclf_core.dataset import clip_passes, embed_files, score_store  # noqa: E402
from cityclf_core.loading.clips import load_encoder  # noqa: E402
from cityclf_core.samples import build_head, draw_illustration  # noqa: E402
from cityclf_core.scoring.pipeline import head_scores  # noqa: E402
from cityclf_core.store import EmbeddingStore, StoredEncoder  # noqa: E402



def matmul_rate(dtype, device, n=4096, reps=5, rounds=3) -> float:
    """GFLOP/s of an n x n x n matrix multiply: the best of `rounds` timings (the machine's peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best

def head_flops(features=768, hidden=1024, outputs=1) -> float:
    return 2 * (features * hidden + 3 * hidden * hidden + hidden * 128 + 128 * 64 + 64 * 32 + 32 * outputs)


def synthetic_store(path: Path, n: int, views: int, dim: int = 768):
    """A store of n files with random embeddings (whole image: views=1; tiles: views=5)."""
    rng = np.random.default_rng(0)
    store = EmbeddingStore(path)
    row = store.register_encoder("bench-identity", "bench-clip", "bench", 336, dim)
    key = "whole" if views == 1 else "tiles:672:1536:up"
    with store.transaction():
        for start in range(0, n, 10000):
            block = rng.standard_normal((min(10000, n - start), views, dim), dtype=np.float32)
            for i, emb in enumerate(block):
                content = f"{start + i:064x}"
                store.put_embedding(content, row.id, key, emb)
                store.put_file(f"/data/{start + i:08d}.png", 1, 1, content)
    return store, row, key


def rescoring(work: Path, n: int, heads: dict, rate32: float, views: int) -> list[tuple]:
    store, row, key = synthetic_store(work / f"synthetic-{views}.db", n, views)
    enc = StoredEncoder(row)
    rows = []
    paths = [f.path for f in store.files()]
    policy = CropPolicy(tiling=views > 1, tile_size=672 if views > 1 else None)
    for name, path in heads.items():
        model = ScoringModel().add(load_head(path), enc, policy)
        head_scores(model.bindings, torch.randn(4096, 768), [1] * 4096, "mean")  # warm up
        # the core: read embeddings from SQLite, run the head, reduce per image
        t = time.perf_counter()
        read_s = head_s = 0.0
        for start in range(0, n, 16384):
            t0 = time.perf_counter()
            found, counts, stacked, _ = store.read_embeddings(paths[start : start + 16384], row, key)
            t1 = time.perf_counter()
            head_scores(model.bindings, torch.from_numpy(stacked), counts, "mean")
            head_s += time.perf_counter() - t1
            read_s += t1 - t0
        core = time.perf_counter() - t
        # everything, including a result object per image (what the CLI writes out)
        t = time.perf_counter()
        for _ in score_store(store, model, chunk=16384):
            pass
        full = time.perf_counter() - t
        head = model.bindings[0].head
        bound = rate32 * 1e9 / head_flops(head.features, head.config.hidden, head.config.outputs)
        rows.append((name, views, n * views / core, n / core, n / full, n * views / head_s / bound, read_s / core))
    store.close()
    return rows


def write_files(folder: Path, count: int) -> list[str]:
    """`count` illustrations of 768..1344 px, JPEG and PNG in turn (the from-files benchmarks' input)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        w, h = [(1024, 1024), (832, 1216), (1216, 832), (768, 1344)][i % 4]
        p = folder / (f"{i:04d}.jpg" if i % 2 else f"{i:04d}.png")
        Image.fromarray(draw_illustration(w, h, i)).save(p, quality=92)
        paths.append(str(p))
    return paths


def from_files(work: Path, clip_dir: Path, head_path: Path, count: int, workers: int, batch: int | None,
               device: str = "cpu"):
    paths = write_files(work / "files", count)
    enc = load_encoder(clip_dir, device=device, dtype="fp32")
    enc.source = str(clip_dir)
    model = ScoringModel().add(load_head(head_path), enc, CropPolicy(tiling=False))
    store = EmbeddingStore(work / "files.db")
    targets = clip_passes(model)
    t = time.perf_counter()
    report = embed_files(store, targets, paths, batch_size=batch, workers=workers)
    wall = time.perf_counter() - t
    store.close()
    return count / wall, report.forward_seconds / wall, report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small CLIP for the from-files part")
    ap.add_argument("--stored", type=int, default=200_000, help="images in the synthetic store (default 200k)")
    ap.add_argument("--files", type=int, default=None, help="image files to embed (default 12, or 64 with --quick)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where CLIP runs for the from-files part (re-scoring runs the heads on the CPU)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cityclf-bench-ds-"))
    print(f"cityclf dataset benchmark, {datetime.date.today()}, {machine()}")
    rate32 = matmul_rate(torch.float32, torch.device("cpu"))
    heads = {
        "score head (1 output)": build_head(work / "score.safetensors", "score", seed=1),
        "class head (3 outputs)": build_head(work / "comp.safetensors", "class",
                                             labels={"0": "Pass", "1": "JPEG", "2": "WEBP"}, seed=2),
    }
    print(f"fp32 matrix multiply 4096^3: {rate32:.0f} GFLOP/s; a head is {head_flops() / 1e6:.1f} MFLOP "
          f"per embedding, so the matrix work allows {rate32 * 1e9 / head_flops():,.0f} embeddings/s\n")
    rows = rescoring(work, args.stored, heads, rate32, 1) + rescoring(work, args.stored // 5, heads, rate32, 5)

    clip_dir = build_clip(work / "clip", args.quick)
    count = args.files or (64 if args.quick else 12)
    ips, busy, report = from_files(work, clip_dir, heads["score head (1 output)"], count, args.workers, None,
                                   args.device)

    print("Re-scoring from the store (no CLIP loaded):\n")
    print("| head | views/image | embeddings/s | images/s (core) | images/s with result objects "
          "| of the matrix-work bound | time reading SQLite | vs re-embedding |")
    print("|---|---|---|---|---|---|---|---|")
    for name, views, eps, core_ips, full_ips, eff, read_share in rows:
        print(f"| {name} | {views} | {eps:,.0f} | {core_ips:,.0f} | {full_ips:,.0f} | {eff:.0%} | "
              f"{read_share:.0%} | {core_ips / ips:,.0f}x |")
    print(f"\nEmbedding from files ({count} JPEG/PNG files, 768..1344 px, whole image, "
          f"{'small CLIP' if args.quick else 'ViT-L/14-336'} fp32 on {args.device}, {args.workers} decode threads):\n")
    print("| images/s end to end | model busy (CLIP forward / wall) |")
    print("|---|---|")
    print(f"| {ips:.3f} | {busy:.1%} |")


if __name__ == "__main__":
    main()
