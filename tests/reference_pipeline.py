"""An independent re-statement of the reference CityClassifiers inference, for comparison.

Written from the published description (../shared/spec/released-models.md), not
from cityclf_core: PIL images, PIL resizes and crops, the transformers CLIP image
processor (its PIL implementation), one image at a time, the head written out
layer by layer. Tests compare our batched tensor pipeline against it, and the
benchmark uses it as the "reference-style" baseline.
"""

from __future__ import annotations

import torch
from torch import nn


class ReferenceHead(nn.Module):
    """The released head, spelled out from the layer table."""

    def __init__(self, features: int, hidden: int, outputs: int):
        super().__init__()
        self.outputs = outputs
        self.up = nn.ModuleList([nn.Linear(features, hidden), nn.Module()])
        self.up[1].long = nn.ModuleList(
            [nn.Linear(hidden, hidden), nn.Identity(), nn.Linear(hidden, hidden), nn.Identity(), nn.Linear(hidden, hidden)]
        )
        self.down = nn.ModuleList(
            [nn.Linear(hidden, 128), nn.Linear(128, 64), nn.Identity(), nn.Identity(), nn.Linear(64, 32), nn.Linear(32, outputs)]
        )

    def forward(self, x):
        x = self.up[0](x)
        long = self.up[1].long
        y = nn.functional.leaky_relu(long[0](x), 0.1)
        y = nn.functional.leaky_relu(long[2](y), 0.1)
        y = long[4](y)
        x = torch.relu(y + x)
        x = self.down[1](self.down[0](x))
        x = nn.functional.leaky_relu(x, 0.01)
        z = self.down[5](self.down[4](x))
        if self.outputs == 1:
            return (torch.tanh(z) + 1) / 2
        return torch.softmax(z, dim=1)


def load_reference_head(path) -> ReferenceHead:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    hidden, features = sd["up.0.weight"].shape
    head = ReferenceHead(int(features), int(hidden), int(sd["down.5.bias"].shape[0]))
    head.load_state_dict(sd)
    return head.eval()


def clip_processor(size: int):
    """The transformers CLIP image processor, PIL implementation (transformers 4 and 5)."""
    try:
        from transformers import CLIPImageProcessorPil as Proc  # transformers >= 5
    except ImportError:
        from transformers import CLIPImageProcessor as Proc  # 4.x: the slow processor is PIL-based
    return Proc(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def five_crop(img, tile: int):
    """Corners and centre, torchvision's five_crop semantics, with PIL."""
    w, h = img.size
    top, left = int(round((h - tile) / 2.0)), int(round((w - tile) / 2.0))
    boxes = [(0, 0), (w - tile, 0), (0, h - tile), (w - tile, h - tile), (left, top)]
    return [img.crop((x, y, x + tile, y + tile)) for x, y in boxes]


def resize_short(img, short: int):
    """torchvision.transforms.functional.resize(img, short) on a PIL image: bilinear."""
    from PIL import Image

    w, h = img.size
    if w <= h:
        size = (short, int(short * h / w))
    else:
        size = (int(short * w / h), short)
    return img.resize(size, Image.BILINEAR)


class ReferencePipeline:
    """Reference-style scoring: one image at a time, PIL preprocessing, shared CLIP per call."""

    def __init__(self, clip_model, clip_size: int, heads: dict, max_side: int = 1536):
        self.clip = clip_model.eval()
        self.size = clip_size
        self.proc = clip_processor(clip_size)
        self.heads = heads  # name -> ReferenceHead
        self.max_side = max_side

    @torch.no_grad()
    def embed(self, img, tiling: bool, tile: int | None = None, upscale: bool = True):
        tile = tile or 2 * self.size
        views = [img]
        if tiling and min(img.size) > tile:
            if max(img.size) > self.max_side and (upscale or min(img.size) > self.max_side):
                img = resize_short(img, self.max_side)
            views = five_crop(img, tile)
        pixels = self.proc(images=views, return_tensors="pt")["pixel_values"]
        param = next(self.clip.parameters())
        out = self.clip(pixel_values=pixels.to(param.device, param.dtype))
        return out.image_embeds.float()

    @torch.no_grad()
    def predict(self, img, head: str, tiling: bool, tile: int | None = None, combine: str = "mean"):
        """Per class, the reduction over tiles (mean/median/max/min), as a list of floats."""
        emb = self.embed(img, tiling, tile)
        pred = self.heads[head](emb)
        reducer = {"mean": torch.mean, "median": torch.median, "max": torch.max, "min": torch.min}[combine]
        return [float(reducer(pred[:, k])) for k in range(pred.shape[1])]
