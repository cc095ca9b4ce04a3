"""Pictures of a scored dataset: a contact sheet and score histograms, drawn with Pillow alone."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from .annotate import fit_text, font
from .confined import replacing
from .errors import ImageError
from .scoring.images import decode_image

BG = (24, 24, 27)
FG = (235, 235, 235)
MUTED = (150, 150, 160)
BAR = (86, 156, 214)


def save_picture(img, out: str | os.PathLike) -> Path:
    """Save `img` as `out` (the format from its extension), made whole beside it first: a full disk leaves
    the old picture, never half a new one."""
    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    with replacing(out) as tmp:
        img.save(tmp, format=fmt)
    return out


def contact_sheet(items: Sequence[tuple[str, list[str]]], out: str | os.PathLike, thumb: int = 256,
                  columns: int | None = None, title: str = "") -> Path:
    """A PNG grid of thumbnails with caption lines under each: items are (image path, lines)."""
    from PIL import Image, ImageDraw

    if not items:
        raise ImageError("nothing to draw: no images were selected")
    columns = columns or min(len(items), max(1, round(math.sqrt(len(items) * 1.6))))
    rows = math.ceil(len(items) / columns)
    size = max(11, thumb // 18)
    fnt, small = font(size), font(max(9, size - 2))
    n_lines = max(len(lines) for _, lines in items) + 1  # + the file name
    cap_h = n_lines * (size + 4) + 6
    pad = 8
    title_h = size + 16 if title else 0
    sheet = Image.new("RGB", (pad + columns * (thumb + pad), title_h + pad + rows * (thumb + cap_h + pad)), BG)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 8), title, font=fnt, fill=FG)
    for i, (path, lines) in enumerate(items):
        x = pad + (i % columns) * (thumb + pad)
        y = title_h + pad + (i // columns) * (thumb + cap_h + pad)
        try:
            img = Image.fromarray(decode_image(path).pixels.numpy())
            img.thumbnail((thumb, thumb))
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        except ImageError:
            draw.rectangle([x, y, x + thumb, y + thumb], outline=MUTED)
            draw.text((x + 6, y + 6), "unreadable", font=small, fill=MUTED)
        ty = y + thumb + 4
        for line in lines:
            draw.text((x, ty), fit_text(draw, line, fnt, thumb), font=fnt, fill=FG)
            ty += size + 4
        draw.text((x, ty), fit_text(draw, os.path.basename(path), small, thumb), font=small, fill=MUTED)
    return save_picture(sheet, out)


def histograms(series: dict[str, Sequence[float]], out: str | os.PathLike, bins: int = 20,
               width: int = 720, panel_height: int = 220) -> Path:
    """One histogram panel per head (scores in 0..1), stacked, as a PNG."""
    from PIL import Image, ImageDraw

    if not series:
        raise ImageError("nothing to draw: no scores")
    fnt, small = font(14), font(11)
    left, right, top, bottom = 56, 16, 28, 44
    img = Image.new("RGB", (width, panel_height * len(series)), BG)
    draw = ImageDraw.Draw(img)
    for p, (name, values) in enumerate(series.items()):
        y0 = p * panel_height
        vals = [v for v in values if v == v]
        counts = [0] * bins
        for v in vals:
            counts[min(bins - 1, max(0, int(v * bins)))] += 1
        peak = max(counts) or 1
        plot_w, plot_h = width - left - right, panel_height - top - bottom
        mean = sum(vals) / len(vals) if vals else float("nan")
        draw.text((left, y0 + 6), f"{name}  (n={len(vals)}, mean {mean:.3f})", font=fnt, fill=FG)
        base = y0 + top + plot_h
        for b, c in enumerate(counts):
            x0 = left + b * plot_w / bins
            h = plot_h * c / peak
            draw.rectangle([x0 + 1, base - h, x0 + plot_w / bins - 1, base], fill=BAR)
        draw.line([left, base, left + plot_w, base], fill=MUTED)
        draw.line([left, y0 + top, left, base], fill=MUTED)
        for t in range(0, 11, 2):
            x = left + plot_w * t / 10
            draw.line([x, base, x, base + 4], fill=MUTED)
            draw.text((x - 8, base + 6), f"{t / 10:.1f}", font=small, fill=MUTED)
        draw.text((8, y0 + top - 2), str(peak), font=small, fill=MUTED)
        draw.text((8, base - 12), "0", font=small, fill=MUTED)
        axis_titles(img, draw, small, left, plot_w, base, y0 + top, f"score (0 to 1, {bins} bins)", "images")
    return save_picture(img, out)


def axis_titles(img, draw, fnt, left: int, plot_w: float, base: float, plot_top: float, x_title: str,
                y_title: str) -> None:
    """The x axis's title centred under its tick labels, the y axis's written upwards left of the axis."""
    from PIL import Image, ImageDraw

    w = int(draw.textlength(x_title, font=fnt))
    draw.text((left + (plot_w - w) / 2, base + 22), x_title, font=fnt, fill=MUTED)
    w = int(draw.textlength(y_title, font=fnt)) + 4
    label = Image.new("RGB", (w, 14), BG)
    ImageDraw.Draw(label).text((2, 0), y_title, font=fnt, fill=MUTED)
    label = label.rotate(90, expand=True)
    img.paste(label, (left - 22, int(plot_top + (base - plot_top - label.height) / 2)))


def line_chart(top: dict[str, Sequence[tuple[float, float]]], bottom: dict[str, Sequence[tuple[float, float]]],
               out: str | os.PathLike, title: str = "", width: int = 760, panel_height: int = 260,
               x_title: str = "", y_titles: tuple[str, str] = ("", "")) -> Path:
    """Two stacked line-chart panels (e.g. losses above, a validation metric below) as a PNG, with axis titles:
    x_title under each panel, y_titles[i] beside panel i."""
    from PIL import Image, ImageDraw

    colours = [(86, 156, 214), (230, 150, 70), (120, 200, 120), (220, 100, 140)]
    fnt, small = font(14), font(11)
    left, right, top_pad, bottom_pad = 64, 20, 34, 44
    panels = [(p, y) for p, y in zip((top, bottom), y_titles) if any(len(v) for v in p.values())]
    img = Image.new("RGB", (width, max(1, len(panels)) * panel_height + 24), BG)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((left, 4), title, font=fnt, fill=FG)
    for p, (series, y_title) in enumerate(panels):
        y0 = 24 + p * panel_height
        points = [pt for v in series.values() for pt in v if pt[1] == pt[1]]
        if not points:
            continue
        xs, ys = [x for x, _ in points], [y for _, y in points]
        x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y_lo, y_hi = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
        plot_w, plot_h = width - left - right, panel_height - top_pad - bottom_pad
        fx = lambda x: left + plot_w * (x - x_lo) / (x_hi - x_lo)  # noqa: E731
        fy = lambda y: y0 + top_pad + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))  # noqa: E731
        base = y0 + top_pad + plot_h
        draw.line([left, base, left + plot_w, base], fill=MUTED)
        draw.line([left, y0 + top_pad, left, base], fill=MUTED)
        draw.text((4, y0 + top_pad - 6), f"{y_hi:.3g}", font=small, fill=MUTED)
        draw.text((4, base - 8), f"{y_lo:.3g}", font=small, fill=MUTED)
        draw.text((left, base + 6), f"{x_lo:g}", font=small, fill=MUTED)
        draw.text((left + plot_w - 40, base + 6), f"{x_hi:g}", font=small, fill=MUTED)
        axis_titles(img, draw, small, left, plot_w, base, y0 + top_pad, x_title, y_title)
        lx = left + 8
        for i, (name, values) in enumerate(series.items()):
            colour = colours[i % len(colours)]
            pts = [(fx(x), fy(y)) for x, y in values if y == y]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            elif pts:
                draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
            draw.text((lx, y0 + 8), name, font=small, fill=colour)
            lx += int(draw.textlength(name, font=small)) + 18
    return save_picture(img, out)


__all__ = ["contact_sheet", "histograms", "line_chart"]
