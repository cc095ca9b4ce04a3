"""Small stand-ins for the real models and data, for the demo, tests and benchmarks.

Nothing here downloads anything: a tiny random CLIP vision model is built with
transformers and saved like a real one; heads are written in the released file
layout; sample pictures are drawn procedurally (flat-shaded shapes and line art,
like simple anime illustrations), with JPEG-compressed and chromatic-aberration
variants. Real weights go through exactly the same loading code.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from .kinds.released import HeadNet
from .loading.clip_folder import quiet_transformers
from .loading.head_files import HeadConfig, save_head
from .scoring.encoders import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def build_tiny_clip(
    folder: str | os.PathLike,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 768,
    intermediate_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Save a random CLIPVisionModelWithProjection (safetensors) + preprocessor config to `folder`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(cfg)
    with quiet_transformers():
        model.save_pretrained(str(folder), safe_serialization=True)
    from .filemode import umask_mode

    for weights in folder.glob("*.safetensors"):  # safetensors writes 0600: give it the umask's mode
        os.chmod(weights, umask_mode())
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": image_size, "width": image_size},
                "do_center_crop": True,
                "do_convert_rgb": True,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": list(OPENAI_CLIP_MEAN),
                "image_std": list(OPENAI_CLIP_STD),
                "resample": 3,
                "rescale_factor": 1 / 255,
                "size": {"shortest_edge": image_size},
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return folder


def vit_l14_336_config():
    """The real ViT-L/14-336 vision tower's shape (for benchmarks with random weights)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )


def random_head(config: HeadConfig, seed: int = 0, gain: float = 1.0) -> HeadNet:
    """A HeadNet with seeded random weights; `gain` scales the last layer to spread its outputs."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = HeadNet(config.features, config.hidden, config.outputs)
    with torch.no_grad():
        net.down[5].weight.mul_(gain)
    return net.eval()


@torch.no_grad()
def calibrate_head(net: HeadNet, embeddings: torch.Tensor, spread: float = 1.5) -> HeadNet:
    """Rescale the last layer so that, over `embeddings`, each logit has mean 0 and std `spread`.

    A random head on a random CLIP answers almost the same for every image (the
    embeddings share a large common part); calibrated, it tells images apart,
    which makes tests that compare pipelines meaningful.
    """
    z = net.logits(embeddings.float())
    mean, std = z.mean(dim=0), z.std(dim=0).clamp_min(1e-8)
    last = net.down[5]
    last.weight.mul_((spread / std)[:, None])
    last.bias.copy_((last.bias - mean) * spread / std)
    return net


def build_head(
    path: str | os.PathLike,
    arch: str = "score",
    labels: dict[str, str] | None = None,
    name: str | None = None,
    rev: str | None = "v0",
    features: int = 768,
    hidden: int = 1024,
    seed: int = 0,
    gain: float = 1.0,
    write_config: bool = True,
    calibrate_with: torch.Tensor | None = None,
) -> Path:
    """Write a random head in the released layout (and its sidecar unless `write_config` is False).

    With `calibrate_with` (embeddings), the head is calibrated to spread its
    outputs over them (see calibrate_head); `gain` then sets the spread.
    """
    path = Path(path)
    outputs = 1 if arch == "score" else len(labels or {"0": "Pass", "1": "Positive"})
    if arch == "class" and labels is None:
        labels = {"0": "Pass", "1": "Positive"}
    config = HeadConfig(name=name or path.stem, rev=rev, arch=arch, labels=labels,
                        features=features, hidden=hidden, outputs=outputs)
    if calibrate_with is not None:
        net = calibrate_head(random_head(config, seed), calibrate_with, spread=gain)
    else:
        net = random_head(config, seed, gain)
    save_head(net, config, path, overwrite=True)
    if not write_config:
        path.with_name(path.stem + ".config.json").unlink()
    return path


def draw_illustration(width: int, height: int, seed: int) -> np.ndarray:
    """A flat-shaded 'illustration': gradient sky, a few shaded discs and bold outlines. HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(0.3, 1.0, 3), rng.uniform(0.0, 0.7, 3)
    t = (y / max(height - 1, 1))[..., None]
    img = top * (1 - t) + bottom * t
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.08, 0.35) * min(width, height)
        colour = rng.uniform(0, 1, 3)
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        inside = d < r
        shade = np.clip(1.0 - 0.35 * ((x - cx + r * 0.3) ** 2 + (y - cy + r * 0.3) ** 2) / (r * r + 1e-6), 0.5, 1)
        img[inside] = (colour * shade[..., None])[inside]
        ring = np.abs(d - r) < max(1.0, min(width, height) / 150)
        img[ring] = 0.05
    for _ in range(int(rng.integers(1, 4))):  # strokes of line art
        angle = rng.uniform(0, math.pi)
        c = rng.uniform(-1, 1) * (width + height) / 4
        dist = np.abs((x - width / 2) * math.sin(angle) - (y - height / 2) * math.cos(angle) - c)
        img[dist < max(1.0, min(width, height) / 200)] = 0.08
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def chromatic_aberration(rgb: np.ndarray, shift: int) -> np.ndarray:
    """Shift the red channel one way and the blue the other, as the reference's synthetic data."""
    out = rgb.copy()
    out[..., 0] = np.roll(rgb[..., 0], shift, axis=1)
    out[..., 2] = np.roll(rgb[..., 2], -shift, axis=1)
    return out


def make_sample_images(folder: str | os.PathLike, count: int = 6, seed: int = 0) -> list[Path]:
    """Write `count` sample pictures of assorted sizes (some large enough to be tiled) to `folder`.

    Every third picture is JPEG-compressed hard, every third (offset) has chromatic
    aberration; names say which, so a demo's output can be read against them.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(512, 512), (768, 1024), (1200, 800), (640, 360), (1024, 1536), (900, 900), (2048, 1152)]
    rnd = random.Random(seed)
    written = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        rgb = draw_illustration(w, h, seed * 1000 + i)
        kind = ("clean", "jpeg", "chroma")[i % 3]
        if kind == "chroma":
            rgb = chromatic_aberration(rgb, rnd.randint(2, 5))
        img = Image.fromarray(rgb)
        if kind == "jpeg":
            path = folder / f"sample_{i:02d}_{kind}.jpg"
            img.save(path, quality=rnd.randint(8, 25))
        else:
            path = folder / f"sample_{i:02d}_{kind}.png"
            img.save(path)
        written.append(path)
    return written


def make_clean_images(folder: str | os.PathLike, count: int, seed: int = 0) -> list[Path]:
    """`count` clean (lossless PNG) illustrations of assorted sizes, for `cityclf synth --generate`."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    written = []
    for i in range(count):
        path = folder / f"clean_{seed}_{i:04d}.png"
        if not path.exists():
            w, h = rnd.choice([(384, 384), (448, 320), (320, 480), (512, 384), (640, 448)])
            Image.fromarray(draw_illustration(w, h, seed * 100_000 + i)).save(path)
        written.append(path)
    return written


__all__ = [
    "make_clean_images",
    "build_head",
    "calibrate_head",
    "build_tiny_clip",
    "chromatic_aberration",
    "draw_illustration",
    "make_sample_images",
    "random_head",
    "vit_l14_336_config",
]
