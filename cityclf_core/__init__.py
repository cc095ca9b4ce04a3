"""cityclf_core: score and classify anime images with the CityClassifiers heads on CLIP.

The library behind the ComfyUI node pack and the `cityclf` command. It has no
ComfyUI imports. One path for the data (see pipeline.py); what a head's
outputs mean is its kind's (kinds/):

    crop plan -> CLIP encoder -> embeddings -> heads -> per-view reduction -> results

Typical use::

    from cityclf_core import load_head, TransformersClipEncoder, ScoringModel
    head = load_head("CCAnime-Compression-v1.5.safetensors")
    clip = TransformersClipEncoder.load("openai/clip-vit-large-patch14-336", allow_download=True)
    model = ScoringModel().add(head, clip)
    results = model.score(images)  # IMAGE tensor [B, H, W, C] or a list of them
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

#: where each public name lives; imported on first use, so that `import cityclf_core` (and the commands
#: that need no model) stay light: torch and transformers load only when something needs them
_EXPORTS = {
    "KNOWN_CLIPS": "catalogue",
    "RELEASES": "catalogue",
    "VIT_L14": "catalogue",
    "VIT_L14_336": "catalogue",
    "ClipModel": "catalogue",
    "Release": "catalogue",
    "default_models_dir": "catalogue",
    "default_policy": "catalogue",
    "download_release": "catalogue",
    "find_release": "catalogue",
    "identify": "catalogue",
    "load_head": "catalogue",
    "paired_clip": "catalogue",
    "resolve_head": "catalogue",
    "FIVE_CROP": "crops",
    "FIVE_CROP_NO_UPSCALE": "crops",
    "MAX_SIDE": "crops",
    "WHOLE_IMAGE": "crops",
    "CropPlan": "crops",
    "CropPolicy": "crops",
    "plan_crops": "crops",
    "render_views": "crops",
    "ClipPass": "embedding",
    "iter_embeddings": "embedding",
    "ComfyClipVisionEncoder": "encoders",
    "Encoder": "encoders",
    "TransformersClipEncoder": "encoders",
    "pick_device": "encoders",
    "pick_dtype": "encoders",
    "CityClfError": "errors",
    "ConfigError": "errors",
    "DownloadError": "errors",
    "ImageError": "errors",
    "StoreError": "errors",
    "WeightsError": "errors",
    "Head": "heads",
    "HeadConfig": "heads",
    "HeadNet": "heads",
    "load_head_file": "heads",
    "save_head": "heads",
    "HeadKind": "kinds",
    "get_kind": "kinds",
    "kind_names": "kinds",
    "register_kind": "kinds",
    "unregister_kind": "kinds",
    "DecodedImage": "images",
    "decode_image": "images",
    "find_images": "images",
    "iter_decoded": "images",
    "TILING_MODES": "pipeline",
    "HeadBinding": "pipeline",
    "ScoringModel": "pipeline",
    "apply_heads": "pipeline",
    "image_list": "pipeline",
    "score_images": "pipeline",
    "COMBINES": "reduce",
    "reduce_segments": "reduce",
    "reduce_tiles": "reduce",
    "HeadResult": "results",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
