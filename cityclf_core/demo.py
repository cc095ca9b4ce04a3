"""`cityclf demo`: the whole scoring job on generated images and tiny models, offline.

It builds (once) a tiny random CLIP and three heads in the released file layout
-- a score head and two classifiers, named like the releases they stand in for --
draws sample pictures (clean, JPEG-compressed, chromatic aberration), then runs
`cityclf score` on them exactly as a user would with the real models. The heads
are untrained, so the numbers show the pipeline at work, not image quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

DEMO_HEADS = {
    "Demo-Aesthetics-v0.safetensors": ("score", None),
    "Demo-ChromaticAberration-v0.safetensors": ("class", {"0": "Pass", "1": "Chromatic Aberration"}),
    "Demo-Compression-v0.safetensors": ("class", {"0": "Pass", "1": "JPEG", "2": "WEBP"}),
}


def build_demo(folder: Path) -> tuple[Path, list[Path], Path]:
    """Create (or reuse) the demo's CLIP folder, head files and images under `folder`."""
    from .loading.clips import load_encoder  # transformers: imported when the demo runs, not with the CLI
    from .samples import build_head, build_tiny_clip, make_sample_images
    from .scoring.crops import CropPolicy
    from .scoring.embedding import iter_embeddings
    from .scoring.images import decode_image

    models, images = folder / "models", folder / "images"
    clip = models / "tiny-clip"
    if not (clip / "config.json").is_file():
        build_tiny_clip(clip, image_size=64, patch_size=16, hidden_size=64, layers=2, heads=4, seed=0)
    samples = sorted(p for p in images.glob("sample_*")) if images.is_dir() else []
    if not samples:
        samples = make_sample_images(images, count=6, seed=0)
    heads = [models / name for name in DEMO_HEADS]
    if not all(h.is_file() for h in heads):
        encoder = load_encoder(clip, device="cpu", dtype="fp32")
        pixels = [decode_image(p).pixels for p in samples]
        calibration = torch.cat([e for _, e in iter_embeddings(encoder, CropPolicy(tiling=True), pixels, 16)])
        for seed, (path, (arch, labels)) in enumerate(zip(heads, DEMO_HEADS.values())):
            build_head(path, arch, labels=labels, name=path.stem.rsplit("-", 1)[0], rev="v0", seed=seed,
                       gain=1.5, calibrate_with=calibration)
    return clip, heads, images


def run_demo(folder: Path, run: Callable[[list[str]], int], progress: bool | None = None) -> int:
    """Build the demo in `folder`, then score it with `run` (the `cityclf` command's main: a user's run)."""
    folder = Path(folder)
    ready = (folder / "models" / "tiny-clip" / "config.json").is_file() and all(
        (folder / "models" / name).is_file() for name in DEMO_HEADS) and any((folder / "images").glob("sample_*"))
    print(f"cityclf demo: using the tiny models and sample images already in {folder}/" if ready else
          f"cityclf demo: building tiny models and sample images in {folder}/ (the first time only)")
    clip, heads, images = build_demo(folder)
    argv = ["score", str(images), "--clip", str(clip)]
    for h in heads:
        argv += ["--model", str(h)]
    if progress is False:
        argv.append("--no-progress")
    print("cityclf demo: running  cityclf " + " ".join(argv) + "\n")
    code = run(argv)
    print(
        "\nThe heads above are untrained stand-ins, so their numbers only show the pipeline at work.\n"
        "With the real models (downloaded once, about 1.7 GB for each CLIP):\n"
        "  cityclf score YOUR_FOLDER --model CityAesthetics-Anime-v1.8 --model CCAnime-Compression-v1.5"
    )
    return code
