"""Drawing scores and labels onto images, readable at any size.

Text sits in a translucent dark band along the bottom (or top) edge, in a font
sized to the image (about 1/22 of its shorter side, 9 px at the least). Lines
wider than the image wrap (at spaces, else anywhere); when the wrapped text is
taller than the image the font shrinks, down to 6 px, and only then is the last
line shortened with an ellipsis.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

MIN_FONT = 9
SMALLEST_FONT = 6


@lru_cache(maxsize=32)
def font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def fit_text(draw, text: str, fnt, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels."""
    if draw.textlength(text, font=fnt) <= width:
        return text
    while text and draw.textlength(text + "…", font=fnt) > width:
        text = text[:-1]
    return text + "…" if text else ""


def wrap(draw, text: str, fnt, width: int) -> list[str]:
    """`text` broken into lines no wider than `width` px: at spaces, and inside words that are too long."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if draw.textlength(candidate, font=fnt) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for ch in word:  # a word wider than the line: break it where it must
            if current and draw.textlength(current + ch, font=fnt) > width:
                lines.append(current)
                current = ""
            current += ch
    if current:
        lines.append(current)
    return lines


def layout(draw, lines: list[str], w: int, h: int, size: int) -> tuple[int, int, list[str]]:
    """(font size, padding, wrapped lines) for `lines` in a w x h image, shrinking the font as needed."""
    lines = [line for line in lines if line]
    for s in range(size, SMALLEST_FONT - 1, -1):
        pad = max(1, s // 4)
        fnt = font(s)
        wrapped = [part for line in lines for part in wrap(draw, line, fnt, max(1, w - 2 * pad))]
        if (s + pad) * len(wrapped) + pad <= h or s == SMALLEST_FONT:
            break
    room = max(1, (h - pad) // (s + pad))
    if len(wrapped) > room:
        wrapped = wrapped[:room]
        wrapped[-1] = fit_text(draw, wrapped[-1] + "…", fnt, max(1, w - 2 * pad))
    return s, pad, wrapped


def caption(img, lines: list[str], position: str = "bottom", size: int | None = None):
    """A copy of PIL image `img` with `lines` drawn in a band at `position` ('bottom' or 'top')."""
    from PIL import Image, ImageDraw

    base = img.convert("RGBA")
    w, h = base.size
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    size, pad, lines = layout(draw, lines, w, h, size or max(MIN_FONT, round(min(w, h) / 22)))
    fnt = font(size)
    line_h = size + pad
    band_h = line_h * len(lines) + pad
    top = h - band_h if position == "bottom" else 0
    draw.rectangle([0, top, w, top + band_h], fill=(0, 0, 0, 150))
    for i, line in enumerate(lines):
        draw.text((pad, top + pad + i * line_h), line, font=fnt, fill=(255, 255, 255, 255))
    return Image.alpha_composite(base, overlay).convert("RGB")


def caption_tensor(image: torch.Tensor, lines: list[str], position: str = "bottom") -> torch.Tensor:
    """[H, W, C] float image in [0, 1] -> the same with `lines` drawn on it (3 channels)."""
    from PIL import Image

    arr = (image[..., :3].detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    out = caption(Image.fromarray(arr), lines, position)
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0)


__all__ = ["caption", "caption_tensor", "fit_text", "font", "layout", "wrap"]
