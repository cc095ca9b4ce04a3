"""CLIP image encoders: S x S views in, projected image embeddings out.

Two kinds, one interface (:class:`Encoder`):

* :class:`ClipVisionEncoder` -- a transformers `CLIPVisionModelWithProjection`
  (loaded from a folder or a hub id by loading/clips.py, as its subclass
  `TransformersClipEncoder`), SDPA attention, fp32 on the CPU by default and
  bf16/fp16 on a GPU;
* :class:`ComfyClipVisionEncoder` -- ComfyUI's `CLIP_VISION` object. It is handed
  views already at its own `image_size`, which ComfyUI's preprocessing passes
  through without resizing again.

The embedding is the projected `image_embeds`, not L2-normalised, returned as
float32 -- what the released heads were trained on.
"""

from __future__ import annotations

import hashlib
import json
import threading

import torch

from ..errors import ConfigError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Encoder:
    """Turns [N, 3, S, S] float views in [0, 1] into [N, D] float32 embeddings.

    What every encoder declares: `image_size` (S), `embed_dim` (D, None until
    known), `identity` (a fingerprint of its weights: embeddings of two encoders
    mix only when their identities match), `name` (for messages), `source`
    (where it came from, as an embedding store records it), `device` (where
    `encode` runs) and `prepare()` (called once before each run, to place the
    model on that device; hosts with a model manager override it).
    """

    image_size: int
    embed_dim: int | None
    identity: str
    name: str
    _source: str | None = None

    @property
    def source(self) -> str:
        """A folder's absolute path or a hub id for encoders loaded from one; else the name."""
        return self._source or self.name

    @source.setter
    def source(self, value: str) -> None:
        self._source = value

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare(self) -> None:
        """Make the model ready to encode on `device`; nothing to do for a model that stays put."""

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, S={self.image_size}, D={self.embed_dim})"


def as_unit_float(views: torch.Tensor) -> torch.Tensor:
    """Views as float32 in [0, 1]: uint8 views (8-bit, as the pipeline makes them) are divided by 255."""
    if views.dtype == torch.uint8:
        return views.float().div_(255.0)
    return views.float()


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' is fp32 on the CPU, bf16 on GPUs that support it, else fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def pick_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:1, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} asked for, but this PyTorch sees no CUDA GPU; use cpu")
    return device


def weights_fingerprint(tensors: dict[str, torch.Tensor], config: dict) -> str:
    """A fingerprint of a CLIP from its shape config and a sample of its weights.

    Names ComfyUI's CLIP_VISION objects (weights in memory, no files to hash); a
    CLIP folder's identity hashes every weight file (loading.fingerprints).
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu", torch.float32).contiguous()
        h.update(key.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


class ClipVisionEncoder(Encoder):
    """A transformers CLIP vision model with projection, in memory (loading.clips loads one from a folder)."""

    def __init__(self, model, identity: str, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, name: str = "clip",
                 dtype: torch.dtype | None = None, source: str | None = None):
        self.model = model.eval()
        self._source = source
        cfg = model.config
        self.image_size = int(cfg.image_size)
        self.embed_dim = int(cfg.projection_dim)
        self.name = name
        self.identity = identity
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        if dtype is not None:
            self.model.to(dtype)
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype=None) -> "ClipVisionEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        if views.ndim != 4 or views.shape[1] != 3 or views.shape[-1] != self.image_size:
            raise ConfigError(
                f"{self.name} takes views shaped [N, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(views.shape)}"
            )
        device, dtype = self.device, self.dtype
        x = as_unit_float(views.to(device, non_blocking=True))
        x = (x - self._mean.to(device)) / self._std.to(device)
        with self._lock, torch.inference_mode():
            out = self.model(pixel_values=x.to(dtype))
        return out.image_embeds.float()

class ComfyClipVisionEncoder(Encoder):
    """ComfyUI's CLIP_VISION object (from the core Load CLIP Vision node)."""

    def __init__(self, clip_vision, name: str = "CLIP_VISION"):
        for attr in ("image_size", "encode_image"):
            if not hasattr(clip_vision, attr):
                raise ConfigError(f"the CLIP_VISION input has no {attr}; connect a Load CLIP Vision node")
        self.clip_vision = clip_vision
        self.image_size = int(clip_vision.image_size)
        self.name = name
        self.embed_dim = _comfy_embed_dim(clip_vision)
        self.identity = f"{name}@{_comfy_fingerprint(clip_vision)}"

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.clip_vision, "load_device", "cpu"))

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        out = self.clip_vision.encode_image(as_unit_float(views).movedim(1, -1), crop=True)
        emb = out["image_embeds"]
        if self.embed_dim is None:
            self.embed_dim = int(emb.shape[-1])
        return emb.float()


class WrappedEncoder(Encoder):
    """An encoder around another: all it declares is the inner one's, read live (a CLIP_VISION's embedding
    size becomes known on its first run); subclasses change how `encode` is called."""

    def __init__(self, inner: Encoder):
        self.inner = inner

    image_size = property(lambda self: self.inner.image_size)
    embed_dim = property(lambda self: self.inner.embed_dim)
    identity = property(lambda self: self.inner.identity)
    name = property(lambda self: self.inner.name)
    source = property(lambda self: self.inner.source)

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def prepare(self) -> None:
        self.inner.prepare()

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        return self.inner.encode(views)


class TimedEncoder(WrappedEncoder):
    """Wraps an encoder and counts the views it encoded and the seconds spent in its forward.

    For "how busy was the model" in dataset jobs and benchmarks; on a GPU it
    synchronises around each forward so the time is the forward's own.
    """

    def __init__(self, inner: Encoder):
        super().__init__(inner)
        self.seconds, self.views = 0.0, 0

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        import time

        cuda = self.inner.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.inner.encode(views)
        if cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.views += int(views.shape[0])
        return out


def _comfy_embed_dim(clip_vision) -> int | None:
    proj = getattr(getattr(clip_vision, "model", None), "visual_projection", None)
    out = getattr(proj, "out_features", None)
    return int(out) if out else None


def _comfy_fingerprint(clip_vision) -> str:
    try:
        sd = clip_vision.get_sd()
        sample = {k: v for k, v in sd.items() if k.endswith("visual_projection.weight")}
        if sample:
            return weights_fingerprint(sample, {"image_size": int(clip_vision.image_size)})
    except Exception:  # an object we cannot read weights from: fall back to its identity
        pass
    return f"object-{id(clip_vision):x}"


__all__ = [
    "DTYPES",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ClipVisionEncoder",
    "ComfyClipVisionEncoder",
    "Encoder",
    "TimedEncoder",
    "WrappedEncoder",
    "pick_device",
    "pick_dtype",
    "weights_fingerprint",
]
