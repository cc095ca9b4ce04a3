"""The one path from images to scores.

    images ([H, W, C] tensors: IMAGE batches, lists of sizes, decoded files)
      -> per (encoder, crop policy) group, a ClipPass: crop plans, views, CLIP   embedding.py
      -> embeddings [n_views, D] float32 per image
      -> every head of the group on those embeddings, float32               Head.predict
      -> per image and head: each output reduced over the views             reduce.py
      -> HeadResult: what the numbers mean is the head's kind               results.py, kinds/

A `ScoringModel` is one or several heads, each bound to an encoder and a crop
policy. Heads sharing an encoder and a policy share one CLIP pass; nothing is
decoded, cropped or embedded twice. Memory is bounded by the chunk size: views
are made image by image and encoded as soon as a chunk is full.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from ..errors import ConfigError, ImageError, WeightsError
from .crops import WHOLE_IMAGE, CropPolicy
from .embedding import ClipPass, default_batch_size, iter_plan_embeddings
from .encoders import Encoder
from .heads import Head, default_policy
from .images import _to_rgb_array, decode_image
from .reduce import reduce_segments
from .results import HeadResult, resolve_head_name

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
class Group:
    """Heads that share one CLIP pass."""

    clip: ClipPass
    bindings: list[HeadBinding] = field(default_factory=list)

    @property
    def encoder(self) -> Encoder:
        return self.clip.encoder

    @property
    def policy(self) -> CropPolicy:
        return self.clip.policy


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
        """Bind `head` to `encoder`; the policy defaults to the head's (see heads.default_policy)."""
        if encoder.embed_dim is not None and encoder.embed_dim != head.features:
            raise WeightsError(
                f"head {head.name} takes {head.features}-d embeddings, but CLIP {encoder.name} gives "
                f"{encoder.embed_dim}-d ones; pair it with a CLIP of embedding size {head.features}"
            )
        if policy is None:
            policy = default_policy(head, encoder.image_size, pairing)
        if policy.tiling:  # a whole-image policy keeps a tile size it was given, for when tiling is forced
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
        """Heads grouped by CLIP pass (encoder, effective crop policy), in first-seen order."""
        if tiling not in TILING_MODES:
            raise ConfigError(f"unknown tiling mode {tiling!r}; choose one of {', '.join(TILING_MODES)}")
        groups: dict[tuple, Group] = {}
        for b in self.bindings:
            policy = effective_policy(b.policy, tiling, upscale).resolved(b.encoder.image_size)
            key = (b.encoder.identity, policy)
            if key not in groups:
                groups[key] = Group(ClipPass(b.encoder, policy))
            groups[key].bindings.append(b)
        return list(groups.values())

    def head_name(self, head: str | None) -> str:
        """A head's full name from its name or the start of it; None: the first head."""
        return resolve_head_name(self.names, head)

    def describe(self) -> list[str]:
        return [
            f"{b.name} ({b.head.kind.name}) on {b.encoder.name} (S={b.encoder.image_size}), {b.policy.describe()}"
            for b in self.bindings
        ]

    def score(self, images, **kwargs) -> list[dict[str, HeadResult]]:
        return score_images(self, images, **kwargs)


def effective_policy(policy: CropPolicy, tiling: str, upscale: bool) -> CropPolicy:
    """A head's policy after the user's tiling override ('auto' keeps it) and no-upscale switch."""
    if tiling == "off":
        return WHOLE_IMAGE
    if tiling == "on" and not policy.tiling:  # forced: the whole-image head tiles, with a --tile-size it has
        policy = dataclasses.replace(policy, tiling=True)
    if policy.tiling and not upscale:
        policy = dataclasses.replace(policy, upscale=False)
    return policy


# ---------------------------------------------------------------- images in


def image_list(images, names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Flatten IMAGE batches / lists / single images into a list of [H, W, C] tensors (no copies).

    Image files (paths) and PIL images are decoded as the command decodes files (EXIF rotation,
    transparency on white, 16-bit reduced).
    """
    out: list[torch.Tensor] = []

    def add(x, where: str):
        if isinstance(x, (list, tuple)):
            for i, item in enumerate(x):
                add(item, f"{where}[{i}]")
            return
        if isinstance(x, (str, os.PathLike)):
            out.append(decode_image(x).pixels)
            return
        if _is_pil(x):
            from PIL import ImageOps

            out.append(torch.from_numpy(_to_rgb_array(ImageOps.exif_transpose(x))[0]))
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


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


# ---------------------------------------------------------------- heads out


@dataclass
class HeadScores:
    """One head's results for many images, as arrays: values [n, N], positive [n], views [n]."""

    binding: HeadBinding
    values: torch.Tensor
    positive: torch.Tensor
    views: torch.Tensor

    def result(self, i: int) -> HeadResult:
        head = self.binding.head
        return HeadResult(head=self.binding.name, kind=head.kind, labels=head.labels,
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
        positive = b.head.kind.positive(per_view)
        reduced = reduce_segments(torch.cat([per_view, positive], dim=1), counts, combine)
        out.append(HeadScores(b, reduced[:, :-1], reduced[:, -1], counts_t))
    return out


def apply_heads(
    bindings: Sequence[HeadBinding], embeddings: Sequence[torch.Tensor], combine: str = "mean"
) -> list[dict[str, HeadResult]]:
    """Run every head on per-image embeddings ([n_i, D] each) and reduce over the views."""
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
        key: [[g.clip.plan(int(x.shape[0]), int(x.shape[1])) for g in gs] for x in flat]
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


__all__ = [
    "TILING_MODES",
    "Group",
    "HeadBinding",
    "HeadResult",
    "HeadScores",
    "ScoringModel",
    "apply_heads",
    "effective_policy",
    "head_scores",
    "image_list",
    "resolve_head_name",
    "score_images",
]
