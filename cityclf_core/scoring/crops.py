"""Crop plans: which views of an image go through CLIP, and how they are made.

Two kinds of plan, both reproducing the reference CityClassifiers pipeline:

* whole image -- what the CLIP image processor does: resize the short side to
  the CLIP input size S (bicubic), centre-crop S x S (offsets rounded down);
* five-crop tiling -- with T the tile size (2*S unless a pairing says otherwise):
  only when the image's short side is strictly greater than T; if the long side
  is over 1536, first resize (bilinear, antialiased) so the SHORT side is 1536
  (which upscales e.g. 1000x2000 to 1536x3072, a quirk the reference has); then
  the four corner crops and the centre crop of T x T (centre offsets
  round((dim - T) / 2)), each resized to S x S (bicubic).

`CropPolicy(upscale=False)` is the variant that never upscales: the short side
only shrinks to 1536 when it is longer than that.

Everything here is a pure function on float tensors in [0, 1], shaped
[B, 3, H, W], on any device. Views are rounded to 8 bits, as both the PIL-based
reference and ComfyUI's CLIP preprocessing do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # torch is imported where views are rendered: plans and policies need none
    import torch

#: The reference's limit: images with a longer side above this get their short side set to it.
MAX_SIDE = 1536
#: Above this many pixels an intermediate resize is done on a window around each crop only.
MAX_RESIZE_PIXELS = 48_000_000



@dataclass(frozen=True)
class CropPolicy:
    """How to cut an image into CLIP views. Hashable: pipelines group heads by it."""

    tiling: bool = False
    tile_size: int | None = None  # None: twice the CLIP input size
    max_side: int = MAX_SIDE
    upscale: bool = True  # the reference's behaviour; False never enlarges an image

    def __post_init__(self):
        if self.tile_size is not None and self.tile_size < 1:
            raise ConfigError(f"tile size must be a positive number of pixels, not {self.tile_size}")
        if self.max_side < 1:
            raise ConfigError(f"max side must be a positive number of pixels, not {self.max_side}")

    def resolved(self, clip_size: int) -> "CropPolicy":
        """The same policy with the tile size filled in for a CLIP of input size `clip_size`."""
        if not self.tiling:
            return CropPolicy(tiling=False)
        return CropPolicy(True, self.tile_size or 2 * clip_size, self.max_side, self.upscale)

    @property
    def key(self) -> str:
        """A stable text key for a resolved policy, as stores record it: 'whole' or 'tiles:672:1536:up'."""
        if not self.tiling:
            return "whole"
        if self.tile_size is None:
            raise ConfigError("internal: a crop policy must be resolved (tile size known) before it has a key")
        return f"tiles:{self.tile_size}:{self.max_side}:{'up' if self.upscale else 'noup'}"

    def describe(self) -> str:
        if not self.tiling:
            return "whole image"
        size = f"{self.tile_size}px" if self.tile_size else "2xS"
        return f"five {size} tiles" + ("" if self.upscale else ", never upscaled")


WHOLE_IMAGE = CropPolicy(tiling=False)
FIVE_CROP = CropPolicy(tiling=True)
FIVE_CROP_NO_UPSCALE = CropPolicy(tiling=True, upscale=False)


@dataclass(frozen=True)
class CropPlan:
    """The views of one image of size (height, width).

    The source is first resized to `resized` (None: kept as is) with `mode`,
    then each (top, left) box of `box` x `box` pixels is cut and, when `box`
    differs from the CLIP size, resized to it (bicubic).
    """

    height: int
    width: int
    resized: tuple[int, int] | None
    mode: str
    box: int
    boxes: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return len(self.boxes)

    @property
    def tiled(self) -> bool:
        return len(self.boxes) > 1


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(h, w) with the short side set to `short` and the long one int(short * long / short_old)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def plan_crops(height: int, width: int, policy: CropPolicy, clip_size: int) -> CropPlan:
    """The crop plan for an image of this size under `policy` for a CLIP of input size S."""
    if height < 1 or width < 1:
        raise ConfigError(f"an image of {width}x{height} pixels has nothing to crop")
    policy = policy.resolved(clip_size)
    tile = policy.tile_size
    if policy.tiling and min(height, width) > tile:
        resized = None
        if max(height, width) > policy.max_side:
            if policy.upscale or min(height, width) > policy.max_side:
                resized = short_side_size(height, width, policy.max_side)
        h, w = resized or (height, width)
        bottom, right = h - tile, w - tile
        centre = (int(round(bottom / 2.0)), int(round(right / 2.0)))
        boxes = ((0, 0), (0, right), (bottom, 0), (bottom, right), centre)
        return CropPlan(height, width, resized, "bilinear", tile, boxes)
    h, w = short_side_size(height, width, clip_size)
    resized = None if (h, w) == (height, width) else (h, w)
    box = ((h - clip_size) // 2, (w - clip_size) // 2)
    return CropPlan(height, width, resized, "bicubic", clip_size, (box,))


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    import torch.nn.functional as F  # here, not at the top: crop plans and policies need no torch

    return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)


def _crop_through_window(x: torch.Tensor, plan: CropPlan, top: int, left: int) -> torch.Tensor:
    """One box of a resize that would be too large to hold: resize only a window around it.

    The window is the box's preimage plus the filter's reach; the result can differ
    from a full resize by interpolation-grid rounding, far below what CLIP notices.
    """
    H, W = x.shape[-2:]
    h2, w2 = plan.resized
    sy, sx = H / h2, W / w2
    margin_y, margin_x = math.ceil(3 * max(sy, 1.0)) + 2, math.ceil(3 * max(sx, 1.0)) + 2
    y0 = max(0, math.floor(top * sy) - margin_y)
    x0 = max(0, math.floor(left * sx) - margin_x)
    y1 = min(H, math.ceil((top + plan.box) * sy) + margin_y)
    x1 = min(W, math.ceil((left + plan.box) * sx) + margin_x)
    out_h = max(plan.box, round((y1 - y0) / sy))
    out_w = max(plan.box, round((x1 - x0) / sx))
    window = _resize(x[..., y0:y1, x0:x1], (out_h, out_w), plan.mode)
    oy = min(max(0, round(top - y0 / sy)), out_h - plan.box)
    ox = min(max(0, round(left - x0 / sx)), out_w - plan.box)
    return window[..., oy : oy + plan.box, ox : ox + plan.box]


def render_views(images: torch.Tensor, plan: CropPlan, clip_size: int) -> torch.Tensor:
    """[B, 3, H, W] images of one size -> [B * plan.count, 3, S, S] views, image-major.

    Values are clamped to [0, 1] and rounded to 8 bits.
    """
    import torch

    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"expected images shaped [B, 3, H, W], got {tuple(images.shape)}")
    B, _, H, W = images.shape
    if (H, W) != (plan.height, plan.width):
        raise ConfigError(f"crop plan is for {plan.width}x{plan.height} images, got {W}x{H}")
    x = images if images.is_floating_point() else images.float() / 255.0
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if plan.resized is not None and plan.resized[0] * plan.resized[1] > MAX_RESIZE_PIXELS:
        crops = [_crop_through_window(x, plan, t, l) for t, l in plan.boxes]
    else:
        if plan.resized is not None:
            x = _resize(x, plan.resized, plan.mode)
        crops = [x[..., t : t + plan.box, l : l + plan.box] for t, l in plan.boxes]
    views = torch.stack(crops, dim=1).reshape(B * plan.count, 3, plan.box, plan.box)
    views = _resize(views, (clip_size, clip_size), "bicubic")
    return views.clamp_(0.0, 1.0).mul_(255.0).round_().div_(255.0).to(torch.float32)


__all__ = [
    "FIVE_CROP",
    "FIVE_CROP_NO_UPSCALE",
    "MAX_SIDE",
    "WHOLE_IMAGE",
    "CropPlan",
    "CropPolicy",
    "plan_crops",
    "render_views",
    "short_side_size",
]
