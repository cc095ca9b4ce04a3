"""A CLIP's identity: one fingerprint of its weights, the same in memory and on disk.

`model_fingerprint` (a loaded model) and `folder_fingerprint` (a folder, without
loading it) agree, so the embedding store, trained heads' CLIP records and
workers can tell CLIPs apart wherever their files are. `clip_fingerprint`
remembers a folder's fingerprint by its files' sizes and mtimes (in
`$CITYCLF_CACHE`, default ~/.cache/cityclf, fingerprints.json): any change to a
file's size or mtime, or a file added or removed, computes it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..scoring.encoders import weights_fingerprint
from .clip_folder import check_clip_folder, quiet_transformers

WEIGHT_SUFFIXES = (".safetensors", ".json")


def cache_file() -> Path:
    return Path(os.environ.get("CITYCLF_CACHE") or "~/.cache/cityclf").expanduser() / "fingerprints.json"


def signature(folder: Path) -> list:
    """(name, size, mtime_ns) of the files that make a CLIP folder, sorted."""
    out = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES):
            st = f.stat()
            out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def remembered_fingerprint(folder: str | os.PathLike, compute: Callable[[Path], str]) -> str:
    folder = Path(folder).resolve()
    sig = signature(folder)
    path = cache_file()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(folder)) if isinstance(known, dict) else None
    if isinstance(entry, dict) and entry.get("files") == sig and isinstance(entry.get("fingerprint"), str):
        return entry["fingerprint"]
    fingerprint = compute(folder)
    if not isinstance(known, dict):
        known = {}
    known[str(folder)] = {"files": sig, "fingerprint": fingerprint}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: compute next time too
    return fingerprint


FINGERPRINT_KEYS = ("visual_projection.weight", "vision_model.embeddings.class_embedding",
                    "vision_model.post_layernorm.weight")
_SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "image_size", "patch_size", "projection_dim", "hidden_act")


def _shape_config(cfg) -> dict:
    return {k: getattr(cfg, k, None) for k in _SHAPE_FIELDS}


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """The identity a CLIP loaded from `folder` will have (see `model_fingerprint`), without loading the model.

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


def model_fingerprint(model) -> str:
    """The identity of a loaded transformers CLIP vision model (what `folder_fingerprint` gives for its folder)."""
    params = dict(model.named_parameters())
    sample = {k: params[k] for k in FINGERPRINT_KEYS if k in params}
    return weights_fingerprint(sample, _shape_config(model.config))


def clip_fingerprint(folder: str | os.PathLike) -> str:
    """`folder_fingerprint`, remembered while the folder's files are unchanged."""
    return remembered_fingerprint(folder, folder_fingerprint)


__all__ = ["FINGERPRINT_KEYS", "clip_fingerprint", "folder_fingerprint", "model_fingerprint",
           "remembered_fingerprint", "signature"]
