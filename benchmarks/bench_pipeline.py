"""Benchmark: our pipeline against the original code as its users run it, side by side.

The original (the public CityClassifiers inference code) is run as its users run
it: one pipeline per model, so an image scored by three heads goes through CLIP
three times, each time with the views that head needs (tests/reference_pipeline.py
restates it: PIL, the transformers CLIP processor, one image at a time). The
three pipelines share one CLIP object here, the least memory that code can use
(built as published, each pipeline would load its own copy).

Both run the same CLIP weights (the ViT-L/14-336 architecture with random
weights, which the original code uses for every model; a small CLIP with
--quick), the same image files, the same three heads in the released layout
(a score head on the whole image, a 2-class and a 3-class classifier on five
672 px tiles). Each run is a fresh process, in the order reference, ours, ours,
reference, so that a change of load during the run cannot skew the ratio. Each
run reports its wall time (decoding, crops, CLIP, heads; the CLIP already
loaded), the CLIP views it sent, and its peak resident memory (ru_maxrss). The
scores of ours are compared with the reference's (max |difference|).

    python benchmarks/bench_pipeline.py                 # ViT-L/14-336, 6 images, fp32
    python benchmarks/bench_pipeline.py --dtype bf16    # the same in bf16
    python benchmarks/bench_pipeline.py --quick         # small CLIP: seconds
    python benchmarks/bench_pipeline.py --memory-only --variants "4,2;4,1"   # ours only, other settings

`--variants "CHUNK,WORKERS;..."` adds runs of ours with other `--batch-size`
(views per CLIP forward) and `--workers` (images decoded ahead) settings.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

#: Mixed sizes: small ones embedded whole, large ones in five tiles (one over 1536 px is resized first).
SIZES = [(640, 480), (1024, 768), (1200, 1600), (2048, 1152), (700, 2000), (512, 512)]
#: name -> (arch, labels) of the three heads, as released: an aesthetic score, two classifiers.
HEADS = {
    "score": ("score", None),
    "ca": ("class", {"0": "Pass", "1": "Chromatic Aberration"}),
    "comp": ("class", {"0": "Pass", "1": "JPEG", "2": "WEBP"}),
}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU threads (torch uses {torch.get_num_threads()}), torch {torch.__version__}"


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (ru_maxrss)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak() -> bool:
    """Restart the kernel's count of peak resident memory (VmHWM), where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def scoring_peak_mib() -> float | None:
    """Peak resident memory since reset_peak() (VmHWM), or None where unknown."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- set-up (parent)

def build_clip(folder: Path, quick: bool) -> Path:
    import torch

    from cityclf_core.loading.clip_folder import quiet_transformers
    from cityclf_core.samples import build_tiny_clip, vit_l14_336_config

    if quick:
        return build_tiny_clip(folder, image_size=112, patch_size=14, hidden_size=256, layers=4, heads=4)
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    with quiet_transformers():
        CLIPVisionModelWithProjection(vit_l14_336_config()).save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(
        str(folder))
    return folder


def write_images(folder: Path, sizes) -> list[Path]:
    from PIL import Image

    from cityclf_core.samples import draw_illustration

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        p = folder / (f"{i}.jpg" if i % 2 else f"{i}.png")
        Image.fromarray(draw_illustration(w, h, i)).save(p, quality=90)
        paths.append(p)
    return paths


def write_heads(folder: Path) -> dict[str, Path]:
    from cityclf_core.samples import build_head

    return {name: build_head(folder / f"{name}.safetensors", arch, labels=labels, seed=seed, gain=20)
            for seed, (name, (arch, labels)) in enumerate(HEADS.items(), start=1)}


# ---------------------------------------------------------------- one run (child process)

def run_reference(args) -> dict:
    """The original code as its users run it: one pipeline per model, each image through each."""
    import torch
    from PIL import Image
    from transformers import CLIPVisionModelWithProjection

    from cityclf_core.scoring.encoders import DTYPES
    from reference_pipeline import ReferencePipeline, load_reference_head

    clip = CLIPVisionModelWithProjection.from_pretrained(args.clip, torch_dtype=DTYPES[args.dtype]).eval()
    size = clip.config.image_size
    heads = {name: load_reference_head(Path(args.heads) / f"{name}.safetensors") for name in HEADS}
    pipelines = {name: ReferencePipeline(clip, size, {name: heads[name]}) for name in HEADS}
    loaded = peak_rss_mib()
    paths = sorted(Path(args.images).iterdir(), key=lambda p: int(p.stem))
    views, out = 0, []
    reset_peak()
    t = time.perf_counter()
    with torch.no_grad():
        for p in paths:
            img = Image.open(p).convert("RGB")
            row = {}
            for name, (arch, _) in HEADS.items():
                emb = pipelines[name].embed(img, tiling=arch == "class")
                views += emb.shape[0]
                row[name] = heads[name](emb).mean(0).tolist()
            out.append(row)
    return {"wall": time.perf_counter() - t, "views": views, "loaded_mib": loaded, "scores": out}


def run_ours(args) -> dict:
    """Ours as `cityclf score` runs it: one model, files decoded in threads, views in chunks."""
    from cityclf_core import ScoringModel, TransformersClipEncoder, load_head
    from cityclf_core.dataset import ScoreOptions, score_files
    from cityclf_core.scoring.encoders import TimedEncoder

    encoder = TimedEncoder(TransformersClipEncoder.load(args.clip, dtype=args.dtype))
    model = ScoringModel()
    for name in HEADS:
        head = load_head(Path(args.heads) / f"{name}.safetensors")
        model.add(head, encoder, name=name)
    loaded = peak_rss_mib()
    paths = sorted(Path(args.images).iterdir(), key=lambda p: int(p.stem))
    options = ScoreOptions(batch_size=args.batch_size, workers=args.workers)
    reset_peak()
    t = time.perf_counter()
    results = [r for _, r in score_files(model, paths, options)]
    wall = time.perf_counter() - t
    return {"wall": wall, "views": encoder.views, "loaded_mib": loaded,
            "scores": [{n: r[n].values for n in HEADS} for r in results]}


def child(args) -> None:
    import torch

    torch.manual_seed(0)
    result = run_reference(args) if args.child == "ref" else run_ours(args)
    result["scoring_peak_mib"] = scoring_peak_mib()
    result["peak_mib"] = peak_rss_mib()
    print(json.dumps(result))


def spawn(kind: str, clip: Path, heads: Path, images: Path, dtype: str, chunk: int | None = None,
          workers: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--clip", str(clip), "--heads", str(heads),
           "--images", str(images), "--dtype", dtype]
    if chunk:
        cmd += ["--batch-size", str(chunk)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = load_average()
    return result


def max_difference(a: list[dict], b: list[dict]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for k in ra for x, y in zip(ra[k], rb[k]))


def describe(label: str, r: dict) -> str:
    scoring = "?" if r["scoring_peak_mib"] is None else f"{r['scoring_peak_mib']:,.0f}"
    return (f"| {label} | {r['wall']:.1f} | {r['views']} | {r['peak_mib']:,.0f} | {r['loaded_mib']:,.0f} | "
            f"{scoring} | {r['load']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small CLIP instead of ViT-L/14-336")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the CLIP's precision (both pipelines)")
    ap.add_argument("--variants", default="",
                    help="more runs of ours: 'CHUNK,WORKERS;...' (--batch-size and --workers), e.g. '4,2;4,1'")
    ap.add_argument("--memory-only", action="store_true", help="skip the side-by-side runs; only --variants")
    ap.add_argument("--child", choices=("ref", "ours"), help=argparse.SUPPRESS)
    ap.add_argument("--clip", help=argparse.SUPPRESS)
    ap.add_argument("--heads", help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    work = Path(tempfile.mkdtemp(prefix="cityclf-bench-"))
    print(f"cityclf pipeline benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}")
    print(f"load average at the start: {load_average()}")
    clip = build_clip(work / "clip", args.quick)
    heads_dir = work / "heads"
    write_heads(heads_dir)
    images = work / "images"
    write_images(images, SIZES)
    print(f"CLIP: {'small test config' if args.quick else 'ViT-L/14-336 architecture'}, random weights, "
          f"{args.dtype}; {len(SIZES)} images {', '.join(f'{w}x{h}' for w, h in SIZES)}; 3 heads (a score head "
          f"on the whole image, a 2-class and a 3-class classifier on five tiles)\n")
    print("| run | wall s | CLIP views | peak RSS MiB | peak RSS after loading MiB | peak RSS while scoring MiB "
          "| load average |")
    print("|---|---|---|---|---|---|---|")
    spawn_args = (clip, heads_dir, images, args.dtype)
    if not args.memory_only:
        runs = []
        for i, kind in enumerate(("ref", "ours", "ours", "ref")):
            r = spawn(kind, *spawn_args)
            runs.append((kind, r))
            print(describe(f"{i + 1}. {'original, one pipeline per model' if kind == 'ref' else 'ours, defaults'}",
                           r), flush=True)
        ref = [r for k, r in runs if k == "ref"]
        ours = [r for k, r in runs if k == "ours"]
    for spec in filter(None, args.variants.split(";")):
        chunk, workers = (int(x) for x in spec.split(","))
        r = spawn("ours", *spawn_args, chunk=chunk, workers=workers)
        print(describe(f"ours, --batch-size {chunk} --workers {workers}", r), flush=True)
    if args.memory_only:
        return
    ref_wall, our_wall = sum(r["wall"] for r in ref), sum(r["wall"] for r in ours)
    ref_peak, our_peak = max(r["peak_mib"] for r in ref), max(r["peak_mib"] for r in ours)
    print(f"\nours vs the original ({args.dtype}, same machine, runs alternated): "
          f"{ref_wall / our_wall:.2f}x faster (wall time over both runs of each); "
          f"{ours[0]['views']} CLIP views vs {ref[0]['views']}; peak RSS {our_peak:,.0f} vs {ref_peak:,.0f} MiB "
          f"({(our_peak - ref_peak) / ref_peak:+.1%}); max |score difference| "
          f"{max_difference(ours[0]['scores'], ref[0]['scores']):.2g}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
