"""The encoder stage: views of images through CLIP, in chunks, back as per-image embeddings.

    image [H, W, C] -> to_bchw -> crop plan (ClipPass.plan) -> views (crops.render_views)
      -> ChunkedEncoder: views of many images in chunks of `batch_size` -> [n_views, D] float32 per image

A `ClipPass` is one CLIP pass: an encoder and the crop policy its views are made
with. Heads that share a ClipPass share one CLIP forward; an embedding store
keys the views of a ClipPass by `ClipPass.key`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from ..errors import ConfigError, ImageError, WeightsError
from .crops import CropPlan, CropPolicy, plan_crops, render_views
from .encoders import Encoder

Planner = Callable[[int, int, str], CropPlan]


@dataclass(eq=False)
class ClipPass:
    """An encoder and the crop policy (tile size resolved) its views are made with.

    `planner(height, width, content)` overrides the policy's plans (training's
    seeded random crops) and then `key` names those views in a store.
    """

    encoder: Encoder
    policy: CropPolicy
    planner: Planner | None = None
    key: str = ""

    def __post_init__(self):
        self.policy = self.policy.resolved(self.encoder.image_size)
        if not self.key:
            if self.planner is not None:
                raise ConfigError("internal: a ClipPass with its own planner needs a key")
            self.key = self.policy.key

    def plan(self, height: int, width: int, content: str = "") -> CropPlan:
        if self.planner is not None:
            return self.planner(height, width, content)
        return plan_crops(height, width, self.policy, self.encoder.image_size)


def to_bchw(image: torch.Tensor, device: torch.device | None = None, where: str = "image") -> torch.Tensor:
    """[H, W, C] (uint8 or float in [0, 1]) -> [1, 3, H, W] float on `device`; alpha dropped, gray expanded."""
    x = image
    if device is not None and x.device != device:
        x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    elif x.is_floating_point():
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise ImageError(f"{where} contains NaN or infinite pixel values; fix the node or file that made it")
    else:
        raise ImageError(f"{where}: unsupported pixel type {x.dtype}; expected float in [0, 1] or uint8")
    c = x.shape[-1]
    if c == 1:
        x = x.expand(*x.shape[:-1], 3)
    elif c == 4:
        x = x[..., :3]
    return x.permute(2, 0, 1).unsqueeze(0)



def iter_embeddings(
    encoder: Encoder,
    policy: CropPolicy,
    images: Iterable[torch.Tensor],
    batch_size: int = 8,
    on_views: Callable[[int], None] | None = None,
    names: Sequence[str] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (index, [n_views, D] float32 embeddings) per image, in order, encoding in chunks.

    At most `batch_size` views (plus one image's worth) are held at a time, so
    memory does not grow with the number of images. `on_views(n)` is called after
    each chunk with the number of views it encoded.
    """
    S = encoder.image_size
    planned = ((x, [plan_crops(int(x.shape[0]), int(x.shape[1]), policy, S)]) for x in images)
    for (index, _), emb in iter_plan_embeddings(encoder, planned, batch_size, on_views, names):
        yield index, emb


def iter_plan_embeddings(
    encoder: Encoder,
    planned: Iterable[tuple[torch.Tensor, Sequence[CropPlan]]],
    batch_size: int = 8,
    on_views: Callable[[int], None] | None = None,
    names: Sequence[str] | None = None,
) -> Iterator[tuple[tuple[int, CropPlan], torch.Tensor]]:
    """For (image, its crop plans): yields ((image index, plan), embeddings) in order.

    Each image is converted once, whatever the number of its plans.
    """
    chunks = ChunkedEncoder(encoder, batch_size, on_views)
    S = encoder.image_size
    for idx, (image, plans) in enumerate(planned):
        where = names[idx] if names and idx < len(names) else f"image {idx}"
        x = to_bchw(image, chunks.device, where)
        for plan in plans:
            yield from chunks.add((idx, plan), render_views(x, plan, S))
        del x
    yield from chunks.flush()


class ChunkedEncoder:
    """Queues views per item and encodes them in chunks of `batch_size`, whatever the item sizes.

    `add(key, views)` returns the (key, [n, D] float32 CPU embeddings) of every item
    completed by the chunks it triggered, in the order items were added; `flush()`
    encodes what is left. Views may be float in [0, 1] or uint8.
    """

    def __init__(self, encoder: Encoder, batch_size: int, on_views: Callable[[int], None] | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, not {batch_size}")
        self.encoder, self.batch_size, self.on_views = encoder, batch_size, on_views
        self.device = encoder.device
        self._queue: list[torch.Tensor] = []  # views not yet encoded, in item order
        self._queued = 0
        self._pending: deque[_Pending] = deque()  # items whose embeddings are not all back yet

    def add(self, key, views: torch.Tensor) -> list[tuple[object, torch.Tensor]]:
        self._queue.append(views)
        self._pending.append(_Pending(key, int(views.shape[0])))
        self._queued += int(views.shape[0])
        done = []
        while self._queued >= self.batch_size:
            self._encode(self.batch_size)
            done += self._finished()
        return done

    def flush(self) -> list[tuple[object, torch.Tensor]]:
        done = []
        while self._queued:
            self._encode(min(self._queued, self.batch_size))
            done += self._finished()
        return done + self._finished()

    def _encode(self, n: int) -> None:
        views = torch.cat(self._queue, dim=0) if len(self._queue) > 1 else self._queue[0]
        batch, rest = views[:n], views[n:]
        emb = self.encoder.encode(batch)
        if emb.ndim != 2 or emb.shape[0] != batch.shape[0]:
            raise WeightsError(f"CLIP {self.encoder.name} returned embeddings of shape {tuple(emb.shape)}")
        self._queue, self._queued = ([rest] if rest.shape[0] else []), int(rest.shape[0])
        pos = 0
        for entry in self._pending:  # views were queued in item order, so rows go back in order
            take = min(entry.needed - entry.have, emb.shape[0] - pos)
            if take > 0:
                entry.parts.append(emb[pos : pos + take])
                entry.have += take
                pos += take
        if self.on_views:
            self.on_views(int(batch.shape[0]))

    def _finished(self) -> list[tuple[object, torch.Tensor]]:
        done = []
        while self._pending and self._pending[0].have == self._pending[0].needed:
            entry = self._pending.popleft()
            done.append((entry.index, torch.cat(entry.parts, dim=0).float().cpu()))
        return done


@dataclass
class _Pending:
    index: object
    needed: int
    have: int = 0
    parts: list = field(default_factory=list)


def default_batch_size(device: torch.device) -> int:
    """Views per CLIP forward: large on a GPU; on a CPU batching gains little past a few."""
    return 64 if device.type == "cuda" else 4


__all__ = ["ChunkedEncoder", "ClipPass", "default_batch_size", "iter_embeddings", "iter_plan_embeddings",
           "to_bchw"]
