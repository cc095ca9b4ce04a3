"""The one path from images to scores.

    images ([H, W, C] tensors: IMAGE batches, lists of sizes, decoded files)
      -> crop plan per image and (encoder, crop policy) group     crops.plan_crops
      -> views, chunked by `batch_size`, through the encoder       crops.render_views, Encoder.encode
      -> embeddings [n_views, D] float32 per image                 iter_embeddings
      -> every head of the group on those embeddings, float32      Head.predict
      -> per image and head: each class reduced over the views     crops.reduce_tiles
      -> HeadResult: score, label, probabilities

A `ScoringModel` is one or several heads, each bound to an encoder and a crop
policy. Heads sharing an encoder and a policy share one CLIP pass; nothing is
decoded, cropped or embedded twice. Memory is bounded by the chunk size: views
are made image by image and encoded as soon as a chunk is full.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from .catalogue import default_policy
from .crops import (
    COMBINES,
    WHOLE_IMAGE,
    CropPlan,
    CropPolicy,
    plan_crops,
    reduce_tiles_batched,
    render_views,
)
from .encoders import Encoder
from .errors import ConfigError, ImageError, WeightsError
from .heads import Head

TILING_MODES = ("auto", "on", "off")
ProgressFn = Callable[[int, int], None]


@dataclass
class HeadBinding:
    """A head as it runs: its encoder and its crop policy (tile size resolved for that encoder)."""

    head: Head
    encoder: Encoder
    policy: CropPolicy
    name: str


@dataclass
class HeadResult:
    """One head's verdict on one image."""

    head: str
    arch: str
    labels: list[str]
    values: list[float]  # per output, reduced over the views: [score] or class probabilities
    positive: float  # score heads: the score; class heads: views-reduced P(not class 0)
    views: int

    @property
    def is_score(self) -> bool:
        return self.arch == "score"

    @property
    def score(self) -> float:
        """The score, or for a class head the probability of its non-pass classes."""
        return self.positive

    @property
    def label(self) -> str:
        if self.is_score:
            return f"{int(self.positive * 100)}%"
        return self.labels[max(range(len(self.values)), key=self.values.__getitem__)]

    @property
    def probs(self) -> dict[str, float] | None:
        return None if self.is_score else dict(zip(self.labels, self.values))

    def value_of(self, label: str) -> float:
        """The reduced probability of class `label` (a name, or an index as text)."""
        if self.is_score:
            return self.positive
        if label in self.labels:
            return self.values[self.labels.index(label)]
        if label.isdigit() and int(label) < len(self.values):
            return self.values[int(label)]
        raise ConfigError(f"head {self.head} has no class {label!r}; its classes are {', '.join(self.labels)}")

    def to_dict(self) -> dict:
        d = {"arch": self.arch, "score": self.positive, "label": self.label, "views": self.views}
        if not self.is_score:
            d["probs"] = self.probs
        return d


@dataclass
class Group:
    """Heads that share one CLIP pass: same encoder, same crop policy."""

    encoder: Encoder
    policy: CropPolicy
    bindings: list[HeadBinding] = field(default_factory=list)


class ScoringModel:
    """One or several heads, each bound to a CLIP encoder and a crop policy."""

    def __init__(self, bindings: Iterable[HeadBinding] = ()):
        self.bindings: list[HeadBinding] = []
        for b in bindings:
            self._append(b)

    def add(
        self,
        head: Head,
        encoder: Encoder,
        policy: CropPolicy | None = None,
        name: str | None = None,
        pairing: str = "best",
    ) -> "ScoringModel":
        """Bind `head` to `encoder`; the policy defaults to the head's pairing (see catalogue)."""
        if encoder.embed_dim is not None and encoder.embed_dim != head.features:
            raise WeightsError(
                f"head {head.name} takes {head.features}-d embeddings, but CLIP {encoder.name} gives "
                f"{encoder.embed_dim}-d ones; pair it with a CLIP of embedding size {head.features}"
            )
        if policy is None:
            policy = default_policy(head, encoder.image_size, pairing)
        policy = policy.resolved(encoder.image_size)
        param = next(head.net.parameters(), None)
        if param is not None and param.device != encoder.device and encoder.device.type != "meta":
            head.to(encoder.device)
        self._append(HeadBinding(head, encoder, policy, name or head.name))
        return self

    def _append(self, binding: HeadBinding) -> None:
        names = {b.name for b in self.bindings}
        name, n = binding.name, 2
        while name in names:
            name, n = f"{binding.name}#{n}", n + 1
        self.bindings.append(dataclasses.replace(binding, name=name))

    def __len__(self) -> int:
        return len(self.bindings)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.bindings]

    def groups(self, tiling: str = "auto", upscale: bool = True) -> list[Group]:
        """Heads grouped by (encoder, effective crop policy), in first-seen order."""
        if tiling not in TILING_MODES:
            raise ConfigError(f"unknown tiling mode {tiling!r}; choose one of {', '.join(TILING_MODES)}")
        groups: dict[tuple, Group] = {}
        for b in self.bindings:
            policy = effective_policy(b.policy, tiling, upscale).resolved(b.encoder.image_size)
            key = (b.encoder.identity, policy)
            groups.setdefault(key, Group(b.encoder, policy)).bindings.append(b)
        return list(groups.values())

    def head_name(self, head: str | None) -> str:
        """A head's full name from its name or the start of it; None: the first head."""
        return resolve_head_name(self.names, head)

    def describe(self) -> list[str]:
        return [
            f"{b.name} ({b.head.arch}) on {b.encoder.name} (S={b.encoder.image_size}), {b.policy.describe()}"
            for b in self.bindings
        ]

    def score(self, images, **kwargs) -> list[dict[str, HeadResult]]:
        return score_images(self, images, **kwargs)


def resolve_head_name(names: list[str], head: str | None) -> str:
    """`head` as given, or the one name it starts (case-insensitively); None or '' gives the first."""
    if not head:
        return names[0]
    if head in names:
        return head
    matches = [n for n in names if n.lower().startswith(head.lower())]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(f"no head {head!r}; the heads are: {', '.join(names)}")


def effective_policy(policy: CropPolicy, tiling: str, upscale: bool) -> CropPolicy:
    """A head's policy after the user's tiling override ('auto' keeps it) and no-upscale switch."""
    if tiling == "off":
        return WHOLE_IMAGE
    if tiling == "on" and not policy.tiling:
        policy = CropPolicy(tiling=True)
    if policy.tiling and not upscale:
        policy = dataclasses.replace(policy, upscale=False)
    return policy


# ---------------------------------------------------------------- images in


def image_list(images, names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Flatten IMAGE batches / lists / single images into a list of [H, W, C] tensors (no copies)."""
    out: list[torch.Tensor] = []

    def add(x, where: str):
        if isinstance(x, (list, tuple)):
            for i, item in enumerate(x):
                add(item, f"{where}[{i}]")
            return
        if not isinstance(x, torch.Tensor):
            raise ImageError(f"{where}: expected an image tensor, got {type(x).__name__}")
        if x.ndim == 4:
            out.extend(x.unbind(0))
        elif x.ndim == 3:
            out.append(x)
        else:
            raise ImageError(f"{where}: expected an IMAGE shaped [B, H, W, C] or [H, W, C], got {tuple(x.shape)}")

    add(images, "images")
    for i, x in enumerate(out):
        where = names[i] if names and i < len(names) else f"image {i}"
        if x.shape[-1] not in (1, 3, 4):
            raise ImageError(f"{where}: expected channels last with 1, 3 or 4 channels, got shape {tuple(x.shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ImageError(f"{where}: image of {x.shape[1]}x{x.shape[0]} pixels has nothing to score")
    return out


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


# ---------------------------------------------------------------- embeddings


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

    @property
    def queued(self) -> int:
        return self._queued

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


# ---------------------------------------------------------------- heads out


def reduce_segments(values: torch.Tensor, counts: Sequence[int], combine: str) -> torch.Tensor:
    """[sum(counts), N] per-view values -> [len(counts), N], each class reduced over its image's views.

    Vectorised (views padded with NaN to the largest count), so reducing a million
    images costs a few tensor operations, not a Python loop.
    """
    if combine not in COMBINES:
        raise ConfigError(f"unknown combine {combine!r}; choose one of {', '.join(COMBINES)}")
    n = len(counts)
    if n == 0:
        return values.new_zeros((0, values.shape[1]))
    counts_t = torch.as_tensor(counts, dtype=torch.long)
    if int(counts_t.min()) == int(counts_t.max()):  # one view count for all: a plain reshape
        grid = values.reshape(n, int(counts_t[0]), values.shape[1])
        return reduce_tiles_batched(grid, combine)
    width = int(counts_t.max())
    rows = torch.repeat_interleave(torch.arange(n), counts_t)
    starts = torch.cumsum(counts_t, 0) - counts_t
    cols = torch.arange(values.shape[0]) - torch.repeat_interleave(starts, counts_t)
    grid = values.new_full((n, width, values.shape[1]), float("nan"))
    grid[rows, cols] = values
    return reduce_tiles_batched(grid, combine)


@dataclass
class HeadScores:
    """One head's results for many images, as arrays: values [n, N], positive [n], views [n]."""

    binding: HeadBinding
    values: torch.Tensor
    positive: torch.Tensor
    views: torch.Tensor

    def result(self, i: int) -> HeadResult:
        head = self.binding.head
        return HeadResult(head=self.binding.name, arch=head.arch, labels=head.labels,
                          values=self.values[i].tolist(), positive=float(self.positive[i]),
                          views=int(self.views[i]))


def head_scores(
    bindings: Sequence[HeadBinding], stacked: torch.Tensor, counts: Sequence[int], combine: str = "mean"
) -> list[HeadScores]:
    """Every head on [sum(counts), D] stacked embeddings, reduced per image: arrays, no per-image objects."""
    out = []
    counts_t = torch.as_tensor(list(counts), dtype=torch.long)
    for b in bindings:
        if stacked.shape[1] != b.head.features:
            raise WeightsError(
                f"head {b.name} takes {b.head.features}-d embeddings, but CLIP {b.encoder.name} gives "
                f"{stacked.shape[1]}-d ones; pair it with a CLIP of embedding size {b.head.features}"
            )
        per_view = b.head.predict(stacked)  # [sum n_i, N] float32
        positive = per_view[:, :1] if b.head.is_score else 1.0 - per_view[:, :1]
        reduced = reduce_segments(torch.cat([per_view, positive], dim=1), counts, combine)
        out.append(HeadScores(b, reduced[:, :-1], reduced[:, -1], counts_t))
    return out


def apply_heads(
    bindings: Sequence[HeadBinding], embeddings: Sequence[torch.Tensor], combine: str = "mean"
) -> list[dict[str, HeadResult]]:
    """Run every head on per-image embeddings ([n_i, D] each) and reduce over the views."""
    if combine not in COMBINES:
        raise ConfigError(f"unknown combine {combine!r}; choose one of {', '.join(COMBINES)}")
    if not embeddings:
        return []
    counts = [int(e.shape[0]) for e in embeddings]
    scores = head_scores(bindings, torch.cat(list(embeddings), dim=0), counts, combine)
    return [{s.binding.name: s.result(i) for s in scores} for i in range(len(embeddings))]


def score_images(
    model: ScoringModel,
    images,
    tiling: str = "auto",
    combine: str = "mean",
    upscale: bool = True,
    batch_size: int | None = None,
    on_progress: ProgressFn | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, HeadResult]]:
    """Score images with every head of `model`: per image, {head name: HeadResult}.

    `images` is an IMAGE tensor [B, H, W, C], a list of them (different sizes
    allowed) or of [H, W, C] tensors. `on_progress(done, total)` counts views
    and may raise to stop the work (ComfyUI's interrupt does).
    """
    if len(model) == 0:
        raise ConfigError("the model has no heads; load at least one")
    flat = image_list(images, names)
    if not flat:
        return []
    groups = model.groups(tiling, upscale)
    by_encoder: dict[str, list[Group]] = {}
    for g in groups:
        by_encoder.setdefault(g.encoder.identity, []).append(g)
    # per encoder and image: each group's crop plan; groups whose plans coincide share the views
    plans = {
        key: [[plan_crops(int(x.shape[0]), int(x.shape[1]), g.policy, gs[0].encoder.image_size) for g in gs]
              for x in flat]
        for key, gs in by_encoder.items()
    }
    unique = {key: [list(dict.fromkeys(per_group)) for per_group in ps] for key, ps in plans.items()}
    total = sum(p.count for us in unique.values() for per_image in us for p in per_image)
    done = 0
    if on_progress:
        on_progress(0, total)

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    results: list[dict[str, HeadResult]] = [{} for _ in flat]
    for key, enc_groups in by_encoder.items():
        encoder = enc_groups[0].encoder
        encoder.prepare()
        size = batch_size or default_batch_size(encoder.device)
        embedded = dict(iter_plan_embeddings(encoder, zip(flat, unique[key]), size, tick, names))
        for gi, g in enumerate(enc_groups):
            embeddings = [embedded[(i, plans[key][i][gi])] for i in range(len(flat))]
            for merged, part in zip(results, apply_heads(g.bindings, embeddings, combine)):
                merged.update(part)
    # keep the model's head order in every result
    order = model.names
    return [{n: r[n] for n in order} for r in results]


def default_batch_size(device: torch.device) -> int:
    """Views per CLIP forward: large on a GPU; on a CPU batching gains little past a few."""
    return 64 if device.type == "cuda" else 8


__all__ = [
    "TILING_MODES",
    "Group",
    "HeadBinding",
    "ChunkedEncoder",
    "HeadResult",
    "HeadScores",
    "ScoringModel",
    "apply_heads",
    "head_scores",
    "reduce_segments",
    "resolve_head_name",
    "default_batch_size",
    "effective_policy",
    "image_list",
    "iter_embeddings",
    "iter_plan_embeddings",
    "score_images",
    "to_bchw",
]
