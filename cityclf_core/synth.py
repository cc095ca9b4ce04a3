"""Synthetic training data from clean images, as the released datasets were bootstrapped.

* compression: 0_clean (lossless PNG), 1_jpeg (JPEG at a random quality), 2_webp (WEBP at a random quality);
* chromatic-aberration: 0_clean, 1_chroma (red and blue channels shifted apart by a random amount).

Output names carry the source's relative path and the random setting, so a rerun
with the same seed makes the same files and skips those already there; nothing
that exists is overwritten. A ready-to-train config.yaml is written beside them.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConfigError, ImageError
from .scoring.images import decode_image, find_images

TASKS = {
    "compression": {0: "clean", 1: "jpeg", 2: "webp"},
    "chromatic-aberration": {0: "clean", 1: "chroma"},
}
LABELS = {
    "compression": {0: "Pass", 1: "JPEG", 2: "WEBP"},
    "chromatic-aberration": {0: "Pass", 1: "Chromatic Aberration"},
}


@dataclass
class SynthReport:
    written: dict[str, int] = field(default_factory=dict)
    existing: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def shift_channels(rgb: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Red moved by (dx, dy), blue by (-dx, -dy), edges repeated (no wrap-around seams)."""
    def move(ch, x, y):
        h, w = ch.shape
        padded = np.pad(ch, ((abs(y), abs(y)), (abs(x), abs(x))), mode="edge")
        return padded[abs(y) - y : abs(y) - y + h, abs(x) - x : abs(x) - x + w]

    out = rgb.copy()
    out[..., 0] = move(rgb[..., 0], dx, dy)
    out[..., 2] = move(rgb[..., 2], -dx, -dy)
    return out


def _name(rel: Path) -> str:
    return "__".join(rel.with_suffix("").parts)


def synthesize(clean: str | os.PathLike, out: str | os.PathLike, task: str = "compression", per_image: int = 1,
               seed: int = 0, quality: tuple[int, int] = (10, 60), shift: tuple[int, int] = (1, 5),
               on_file=None) -> SynthReport:
    """Write the class folders for `task` under `out` from the images in `clean`."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not (1 <= quality[0] <= quality[1] <= 100):
        raise ConfigError("quality must be a range within 1..100, like 10-60")
    if not (1 <= shift[0] <= shift[1]):
        raise ConfigError("shift must be a range of pixels, at least 1, like 1-5")
    clean, out = Path(clean), Path(out)
    if out.resolve() == clean.resolve() or out.resolve() in clean.resolve().parents:
        raise ConfigError("--out must not be the clean folder or contain it")
    files, problems = find_images([clean])
    if not files:
        raise ConfigError(f"no images in {clean}")
    report = SynthReport(skipped=[(str(p), why) for p, why in problems])
    folders = {k: out / f"{k}_{v}" for k, v in TASKS[task].items()}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    for path in files:
        rel = path.relative_to(clean) if clean in path.parents else Path(path.name)
        rng = random.Random(f"{seed}:{rel.as_posix()}")
        try:
            rgb = decode_image(path).pixels.numpy()
        except ImageError as e:
            report.skipped.append((str(path), str(e)))
            continue
        outputs: list[tuple[Path, Callable[[Path], None]]] = [(folders[0] / f"{_name(rel)}.png", lambda p, a=rgb: _save(a, p, "PNG"))]
        for _ in range(per_image):
            if task == "compression":
                q = rng.randint(*quality)
                outputs.append((folders[1] / f"{_name(rel)}_q{q}.jpg", lambda p, q=q: _save(rgb, p, "JPEG", quality=q)))
                q = rng.randint(*quality)
                outputs.append((folders[2] / f"{_name(rel)}_q{q}.webp", lambda p, q=q: _save(rgb, p, "WEBP", quality=q)))
            else:
                dx = rng.randint(*shift) * rng.choice((-1, 1))
                dy = rng.choice((0, rng.randint(0, shift[1]))) * rng.choice((-1, 1))
                outputs.append((folders[1] / f"{_name(rel)}_s{dx}_{dy}.png",
                                lambda p, dx=dx, dy=dy: _save(shift_channels(rgb, dx, dy), p, "PNG")))
        for target, write in outputs:
            if target.exists():
                report.existing += 1
                continue
            write(target)
            report.written[target.parent.name] = report.written.get(target.parent.name, 0) + 1
        if on_file:
            on_file(path)
    write_config(out, task)
    return report


def _save(rgb: np.ndarray, path: Path, fmt: str, **kw) -> None:
    """Encode in memory, then create the file exclusively: an existing file is never replaced."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    with open(path, "xb") as f:
        f.write(buf.getvalue())


def write_config(out: Path, task: str) -> Path:
    """A starting config for this data (reference keys + ours), unless one is already there."""
    path = out / "config.yaml"
    if path.exists():
        return path
    labels = "\n".join(f"  {k}:\n    name: \"{v}\"\n    loss: 1.0" for k, v in LABELS[task].items())
    base = "MyCompression" if task == "compression" else "MyChromaticAberration"
    path.write_text(f"""# Written by `cityclf synth`; the keys are the reference CityClassifiers format plus
# a few of cityclf's own (val_fraction, seed, early_stopping, data.*). Steps count samples.
model:
  base: "{base}"
  rev:  "v0.1"
  arch: class
  clip: CLIP

train:
  lr:    3.0e-4
  steps: 24000
  batch: 32
  cosine: True
  val_fraction: 0.2
  seed: 0
  early_stopping: 8

data:
  random_crops: True
  crops_per_image: 4

labels:
{labels}
""", encoding="utf-8")
    return path


__all__ = ["LABELS", "TASKS", "SynthReport", "shift_channels", "synthesize", "write_config"]
