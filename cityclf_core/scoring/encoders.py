"""CLIP image encoders: S x S views in, projected image embeddings out.

Two kinds, one interface (:class:`Encoder`):

* :class:`TransformersClipEncoder` -- a transformers `CLIPVisionModelWithProjection`
  from a local folder or a hub id (downloaded only when allowed), SDPA attention,
  fp32 on the CPU by default and bf16/fp16 on a GPU;
* :class:`ComfyClipVisionEncoder` -- ComfyUI's `CLIP_VISION` object. It is handed
  views already at its own `image_size`, which ComfyUI's preprocessing passes
  through without resizing again.

The embedding is the projected `image_embeds`, not L2-normalised, returned as
float32 -- what the released heads were trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

import torch

from .errors import ConfigError, DownloadError, WeightsError
from .weights import check_safetensors_file, describe_non_safetensors

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_CLIP_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json",
               "model-*.safetensors"]


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
    """A content fingerprint of a CLIP: its shape config and a sample of its weights.

    The same weights give the same fingerprint wherever they are stored, so an
    embedding store can refuse to mix models without hashing gigabytes.
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu", torch.float32).contiguous()
        h.update(key.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


FINGERPRINT_KEYS = ("visual_projection.weight", "vision_model.embeddings.class_embedding",
                    "vision_model.post_layernorm.weight")
_SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "image_size", "patch_size", "projection_dim", "hidden_act")


def _shape_config(cfg) -> dict:
    return {k: getattr(cfg, k, None) for k in _SHAPE_FIELDS}


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """The identity a TransformersClipEncoder loaded from `folder` will have, without loading the model.

    Reads the vision config and three small tensors; lets the embedding store
    find a CLIP's embeddings when scoring, with no CLIP in memory.
    """
    from safetensors import safe_open
    from transformers import CLIPVisionConfig

    folder = Path(folder)
    check_clip_folder(folder)
    with quiet_transformers():
        cfg = CLIPVisionConfig.from_pretrained(str(folder))
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            keys = set(f.keys())
            for k in FINGERPRINT_KEYS:
                if k in keys:
                    tensors[k] = f.get_tensor(k)
    return weights_fingerprint(tensors, _shape_config(cfg))


class TransformersClipEncoder(Encoder):
    """A transformers CLIP vision model with projection."""

    def __init__(self, model, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, name: str = "clip",
                 dtype: torch.dtype | None = None, source: str | None = None):
        self.model = model.eval()
        self._source = source
        cfg = model.config
        self.image_size = int(cfg.image_size)
        self.embed_dim = int(cfg.projection_dim)
        self.name = name
        params = dict(model.named_parameters())
        sample = {k: params[k] for k in FINGERPRINT_KEYS if k in params}
        self.identity = weights_fingerprint(sample, _shape_config(cfg))
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

    def to(self, device=None, dtype=None) -> "TransformersClipEncoder":
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

    @classmethod
    def load(
        cls,
        source: str | os.PathLike,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = "auto",
        allow_download: bool = False,
        download_dir: str | os.PathLike | None = None,
    ) -> "TransformersClipEncoder":
        """From a local folder (config.json + safetensors) or a hub id.

        A hub id is looked up in `download_dir` (when given) and the Hugging Face
        cache; it is downloaded only with `allow_download`.
        """
        device = pick_device(device)
        folder, name = locate_clip(source, allow_download=allow_download, download_dir=download_dir)
        return cls.from_folder(folder, name=name, device=device, dtype=pick_dtype(dtype, device))

    @classmethod
    def from_folder(cls, folder: Path, name: str, device: torch.device, dtype: torch.dtype,
                    source: str | None = None):
        from transformers import CLIPVisionModelWithProjection

        check_clip_folder(folder)
        attempts = ({"attn_implementation": "sdpa"}, {})  # older transformers lack SDPA for CLIP
        for extra in attempts:
            try:
                with quiet_transformers():
                    model = CLIPVisionModelWithProjection.from_pretrained(str(folder), use_safetensors=True, **extra)
                break
            except (TypeError, ValueError) as e:
                if extra and ("sdpa" in str(e).lower() or "attn_implementation" in str(e)):
                    continue
                raise WeightsError(f"CLIP folder {folder} could not be loaded: {e}") from None
            except (OSError, RuntimeError) as e:
                raise WeightsError(f"CLIP folder {folder} could not be loaded: {e}") from None
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        proc = folder / "preprocessor_config.json"
        if proc.is_file():
            try:
                p = json.loads(proc.read_text(encoding="utf-8"))
                mean = tuple(p.get("image_mean", mean))
                std = tuple(p.get("image_std", std))
            except (ValueError, OSError):
                pass
        enc = cls(model, mean=mean, std=std, name=name, source=source)
        return enc.to(device=device, dtype=dtype)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' own progress bars and load reports while we load a CLIP."""
    from transformers.utils import logging as tlog

    bars = tlog.is_progress_bar_enabled()
    level = tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def check_clip_folder(folder: Path) -> None:
    """Clear errors for folders that are not a transformers CLIP in safetensors."""
    if not (folder / "config.json").is_file():
        raise WeightsError(
            f"{folder} is not a transformers CLIP folder: it has no config.json. "
            "Give a folder saved with save_pretrained, or a hub id like openai/clip-vit-large-patch14-336."
        )
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise WeightsError(f"{folder}/config.json is not valid JSON ({e})") from None
    model_type = cfg.get("model_type")
    if model_type not in ("clip", "clip_vision_model", None):
        raise WeightsError(f"{folder} holds a {model_type!r} model, not a CLIP vision model")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        extra = f" (it has {', '.join(pickles)}: pickled weights are never loaded)" if pickles else ""
        raise WeightsError(f"{folder} has no .safetensors weights{extra}. Save the model with safe_serialization.")
    for shard in shards:
        check_safetensors_file(shard, "CLIP weights")


def locate_clip(
    source: str | os.PathLike, allow_download: bool = False, download_dir: str | os.PathLike | None = None,
) -> tuple[Path, str]:
    """A local folder for `source` (a folder, or a hub id found or fetched), and a display name."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return path, path.name
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(1024)
        problem = describe_non_safetensors(path, head, path.stat().st_size)
        raise WeightsError(
            problem or f"{path} is a single file; a transformers CLIP is a folder with config.json and "
            "model.safetensors (in ComfyUI, load single-file CLIP vision models with Load CLIP Vision instead)"
        )
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise WeightsError(f"CLIP {text!r} is neither a folder nor a hub id like openai/clip-vit-large-patch14-336")
    from huggingface_hub import snapshot_download

    name = text.split("/")[-1]
    local_dir = Path(download_dir) / text.replace("/", "--") if download_dir else None
    if local_dir is not None and (local_dir / "config.json").is_file():
        return local_dir, name
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0", "false", "False")
    kw = {"allow_patterns": _CLIP_FILES}
    if local_dir is not None:
        kw["local_dir"] = str(local_dir)
    try:
        folder = snapshot_download(text, local_files_only=True, **kw)
        return Path(folder), name
    except Exception:
        if not allow_download or offline:
            raise DownloadError(
                f"CLIP {text} is not on this machine and downloads are off. Allow downloads "
                f"(cityclf: drop --offline; the loader node: download_missing), or give a local folder."
            ) from None
    try:
        folder = snapshot_download(text, **kw)
    except Exception as e:
        raise DownloadError(
            f"could not download CLIP {text} ({type(e).__name__}: {e}). If this machine is offline, "
            f"save it elsewhere with save_pretrained and give the folder."
        ) from None
    return Path(folder), name


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
    "ComfyClipVisionEncoder",
    "Encoder",
    "TimedEncoder",
    "TransformersClipEncoder",
    "check_clip_folder",
    "folder_fingerprint",
    "locate_clip",
    "pick_device",
    "pick_dtype",
    "weights_fingerprint",
]
