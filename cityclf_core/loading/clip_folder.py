"""A transformers CLIP folder (config.json + safetensors weights): checked before anything reads it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import WeightsError
from .weights import check_safetensors_file


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


__all__ = ["check_clip_folder", "quiet_transformers"]
