"""Benchmark: our batched pipeline against the one-image-at-a-time reference-style pipeline.

Same CLIP weights (the real ViT-L/14-336 architecture with random weights, or a
small one with --quick), the same image files, three heads (a score head on the
whole image, two classifiers on five tiles), in one run. Prints a table:

* images/s end to end from files (decode, crops, CLIP, heads), reference vs ours,
  in fp32 and, where the CPU supports it, bf16 (with bf16's deviation from fp32);
* the share of a large fp32 (and bf16) matrix multiply's rate, measured in the
  same run, that our CLIP forward reaches; and the share of wall time spent
  outside the CLIP forward;
* peak memory for a small and a 4x larger batch at the same chunk size.

    python benchmarks/bench_pipeline.py            # ViT-L/14-336, 6 images: a few minutes on 2 CPU cores
    python benchmarks/bench_pipeline.py --quick    # small CLIP: seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from cityclf_core import CropPolicy, ScoringModel, TransformersClipEncoder, load_head  # noqa: E402
from cityclf_core.samples import build_head, draw_illustration  # noqa: E402
from cityclf_core.scoring.encoders import TimedEncoder  # noqa: E402
from cityclf_core.scoring.images import iter_decoded  # noqa: E402

SIZES = [(640, 480), (1024, 768), (1200, 1600), (2048, 1152), (700, 2000), (512, 512)]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPU threads (torch uses {torch.get_num_threads()}){gpu}, torch {torch.__version__}"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(dtype, device, n=4096, reps=5, rounds=3) -> float:
    """GFLOP/s of an n x n x n matrix multiply: the best of `rounds` timings (the machine's peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(rounds):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def clip_flops_per_view(cfg) -> float:
    """Multiply-adds x 2 of one CLIP vision forward (patch embedding, layers, projection)."""
    D, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    P = (cfg.image_size // cfg.patch_size) ** 2
    T = P + 1
    per_layer = 2 * T * (4 * D * D + 2 * D * F) + 2 * 2 * T * T * D
    return L * per_layer + 2 * P * 3 * cfg.patch_size**2 * D + 2 * D * cfg.projection_dim


def build_clip(folder: Path, quick: bool) -> Path:
    from cityclf_core.loading.clip_folder import quiet_transformers
    from cityclf_core.samples import build_tiny_clip, vit_l14_336_config

    if quick:
        return build_tiny_clip(folder, image_size=112, patch_size=14, hidden_size=256, layers=4, heads=4)
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(0)
    with quiet_transformers():
        CLIPVisionModelWithProjection(vit_l14_336_config()).save_pretrained(str(folder))
    return folder


def write_images(folder: Path, sizes) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        p = folder / (f"{i}.jpg" if i % 2 else f"{i}.png")
        Image.fromarray(draw_illustration(w, h, i)).save(p, quality=90)
        paths.append(p)
    return paths


def run_reference(clip_model, size, head_paths, paths):
    """One image at a time: PIL decode, CLIP processor, whole view for the score head, tiles shared by classifiers."""
    from PIL import Image
    from reference_pipeline import ReferencePipeline, load_reference_head

    device = next(clip_model.parameters()).device  # ReferencePipeline.embed returns embeddings there
    heads = {name: load_reference_head(p).to(device) for name, p in head_paths.items()}
    ref = ReferencePipeline(clip_model, size, heads)
    out = []
    t = time.perf_counter()
    for p in paths:
        img = Image.open(p).convert("RGB")
        whole = ref.embed(img, tiling=False)
        tiles = ref.embed(img, tiling=True)
        out.append({"score": heads["score"](whole).mean(0).tolist(),
                    "ca": heads["ca"](tiles).mean(0).tolist(), "comp": heads["comp"](tiles).mean(0).tolist()})
    return time.perf_counter() - t, out


def run_ours(encoder, head_paths, paths, batch_size):
    timed = TimedEncoder(encoder)
    model = ScoringModel()
    for name, p in head_paths.items():
        head = load_head(p)
        head.display = name
        model.add(head, timed)
    t = time.perf_counter()
    pixels = [d.pixels for _, d, _ in iter_decoded(paths, workers=2)]
    results = model.score(pixels, batch_size=batch_size)
    wall = time.perf_counter() - t
    out = [{n: r[n].values for n in head_paths} for r in results]
    return wall, timed, out


def max_deviation(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for k in ra for x, y in zip(ra[k], rb[k]))


def memory_probe(args) -> None:
    """Child process: score N generated 1024x1024 images at chunk size C; print peak RSS in MiB."""
    import resource

    enc = TransformersClipEncoder.load(args.clip, device=args.device)
    head = load_head(args.head)
    from cityclf_core import iter_embeddings

    def images():
        for i in range(args.n):
            yield torch.from_numpy(draw_illustration(1024, 1024, i))

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in iter_embeddings(enc, CropPolicy(tiling=True), images(), batch_size=args.chunk):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0
    print(json.dumps({"rss_mib": peak / 1024, "growth_mib": (peak - base) / 1024, "gpu_mib": gpu}))
    del head


def probe_memory(clip: Path, head: Path, device: str, n: int, chunk: int) -> dict:
    cmd = [sys.executable, __file__, "--probe", "--clip", str(clip), "--head", str(head), "--n", str(n),
           "--chunk", str(chunk), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small CLIP instead of ViT-L/14-336")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clip", help=argparse.SUPPRESS)
    ap.add_argument("--head", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return memory_probe(args)

    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="cityclf-bench-"))
    print(f"cityclf pipeline benchmark, {datetime.date.today()}, {machine()}")
    clip_dir = build_clip(work / "clip", args.quick)
    enc32 = TransformersClipEncoder.load(clip_dir, device=device, dtype="fp32")
    cfg = enc32.model.config
    print(f"CLIP: {'small test config' if args.quick else 'ViT-L/14-336 architecture'}, random weights, "
          f"S={cfg.image_size}, {sum(p.numel() for p in enc32.model.parameters()) / 1e6:.0f}M parameters")
    heads = {
        "score": build_head(work / "score.safetensors", "score", seed=1, gain=20),
        "ca": build_head(work / "ca.safetensors", "class", labels={"0": "Pass", "1": "CA"}, seed=2, gain=20),
        "comp": build_head(work / "comp.safetensors", "class", labels={"0": "Pass", "1": "JPEG", "2": "WEBP"},
                           seed=3, gain=20),
    }
    paths = write_images(work / "images", SIZES)
    n = len(paths)
    flops = clip_flops_per_view(cfg)
    rate32 = matmul_rate(torch.float32, device)

    bf16_ok = device.type == "cuda" or torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    rate16 = matmul_rate(torch.bfloat16, device) if bf16_ok else float("nan")

    # Each comparison runs both pipelines alternately -- reference, ours, ours, reference -- on the same
    # weights in the same dtype, so that a change of load during the run cannot skew the ratio; the rates
    # are over the two runs of each.
    def alternate(encoder, label, rate):
        run_ours(encoder, heads, paths[:1], args.batch_size)  # warm up (allocator, kernels)
        ref_walls, our_walls = [], []
        ref_wall, ref_out = run_reference(encoder.model, cfg.image_size, heads, paths)
        ref_walls.append(ref_wall)
        for _ in range(2):
            wall, timed, ours = run_ours(encoder, heads, paths, args.batch_size)
            our_walls.append(wall)
        ref_wall, _ = run_reference(encoder.model, cfg.image_size, heads, paths)
        ref_walls.append(ref_wall)
        ref_ips, our_ips = 2 * n / sum(ref_walls), 2 * n / sum(our_walls)
        dev = max_deviation(ours, [{"score": r["score"], "ca": r["ca"], "comp": r["comp"]} for r in ref_out])
        return [(f"reference-style, {label}", ref_ips, None, None, None, ref_ips),
                (f"ours, {label}", our_ips, timed.views * flops / timed.seconds / 1e9 / rate,
                 (wall - timed.seconds) / wall, dev, ref_ips)], ours, timed

    rows, ours32, timed = alternate(enc32, "fp32", rate32)
    if bf16_ok:  # the reference in bf16 too: one constructor argument (the model's dtype)
        enc16 = TransformersClipEncoder.load(clip_dir, device=device, dtype="bf16")
        rows16, ours16, _ = alternate(enc16, "bf16", rate16)
        rows16[1] = (*rows16[1][:4], max_deviation(ours16, ours32), rows16[1][5])
        rows += rows16

    views = timed.views
    print(f"{n} images {', '.join(f'{w}x{h}' for w, h in SIZES)}; 3 heads (score: whole image; two classifiers: "
          f"five tiles); {views} CLIP views for ours")
    print(f"matrix multiply 4096^3: fp32 {rate32:.0f} GFLOP/s, bf16 {rate16:.0f} GFLOP/s; "
          f"CLIP forward {flops / 1e9:.1f} GFLOP per view\n")
    print("runs alternate: reference, ours, ours, reference (per dtype); rates over both runs of each\n")
    print("| pipeline | images/s | vs the reference in the same dtype | CLIP share of matmul peak | "
          "time outside CLIP | max deviation |")
    print("|---|---|---|---|---|---|")
    for name, ips, share, outside, dev, ref_ips in rows:
        dev_text = "" if dev is None else f"{dev:.4f} " + ("(vs ours fp32)" if "bf16" in name else
                                                          "(vs the reference)")
        print(f"| {name} | {ips:.3f} | {ips / ref_ips:.2f}x | "
              f"{'' if share is None else f'{share:.0%}'} | {'' if outside is None else f'{outside:.1%}'} | "
              f"{dev_text} |")

    small, large = 2, 8
    m_small = probe_memory(clip_dir, heads["comp"], args.device, small, 4)
    m_large = probe_memory(clip_dir, heads["comp"], args.device, large, 4)
    print(f"\nmemory, chunk 4 views, 1024x1024 images streamed: {small} images peak RSS {m_small['rss_mib']:.0f} MiB, "
          f"{large} images {m_large['rss_mib']:.0f} MiB" + (
              f"; GPU peak {m_small['gpu_mib']:.0f} vs {m_large['gpu_mib']:.0f} MiB" if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
