"""cityclf_core: score and classify anime images with the CityClassifiers heads on CLIP.

The library behind the ComfyUI node pack and the `cityclf` command. It has no
ComfyUI imports. One path for the data (scoring/pipeline.py); what a head's
outputs mean is its kind's (kinds/); what to load and from where is loading/'s:

    crop plan -> CLIP encoder -> embeddings -> heads -> per-view reduction -> results

Typical use::

    from cityclf_core import load_head, TransformersClipEncoder, ScoringModel
    head = load_head("CCAnime-Compression-v1.5.safetensors")
    clip = TransformersClipEncoder.load("openai/clip-vit-large-patch14-336", allow_download=True)
    model = ScoringModel().add(head, clip)
    results = model.score(images)  # IMAGE tensor [B, H, W, C] or a list of them
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.2.1"

#: where each public name lives; imported on first use, so that `import cityclf_core` (and the commands
#: that need no model) stay light: torch and transformers load only when something needs them
_EXPORTS = {
    "CityClfError": "errors",
    "ConfigError": "errors",
    "DownloadError": "errors",
    "ImageError": "errors",
    "StoreError": "errors",
    "WeightsError": "errors",
    "HeadKind": "kinds",
    "get_kind": "kinds",
    "kind_names": "kinds",
    "register_kind": "kinds",
    "unregister_kind": "kinds",
    "HeadNet": "kinds.released",
    "KNOWN_CLIPS": "loading.catalogue",
    "OTHER_HEADS": "loading.catalogue",
    "RELEASES": "loading.catalogue",
    "VIT_L14": "loading.catalogue",
    "VIT_L14_336": "loading.catalogue",
    "ClipModel": "loading.catalogue",
    "Release": "loading.catalogue",
    "default_models_dir": "loading.catalogue",
    "download_release": "loading.catalogue",
    "find_release": "loading.catalogue",
    "identify": "loading.catalogue",
    "load_head": "loading.catalogue",
    "paired_clip": "loading.catalogue",
    "resolve_head": "loading.catalogue",
    "TransformersClipEncoder": "loading.clips",
    "HeadConfig": "loading.head_config",
    "load_head_file": "loading.head_files",
    "save_head": "loading.head_files",
    "FIVE_CROP": "scoring.crops",
    "FIVE_CROP_NO_UPSCALE": "scoring.crops",
    "MAX_SIDE": "scoring.crops",
    "WHOLE_IMAGE": "scoring.crops",
    "CropPlan": "scoring.crops",
    "CropPolicy": "scoring.crops",
    "plan_crops": "scoring.crops",
    "render_views": "scoring.crops",
    "ClipPass": "scoring.embedding",
    "iter_embeddings": "scoring.embedding",
    "ComfyClipVisionEncoder": "scoring.encoders",
    "Encoder": "scoring.encoders",
    "pick_device": "scoring.encoders",
    "pick_dtype": "scoring.encoders",
    "Head": "scoring.heads",
    "default_policy": "scoring.heads",
    "DecodedImage": "scoring.images",
    "decode_image": "scoring.images",
    "find_images": "scoring.images",
    "iter_decoded": "scoring.images",
    "TILING_MODES": "scoring.pipeline",
    "HeadBinding": "scoring.pipeline",
    "ScoringModel": "scoring.pipeline",
    "apply_heads": "scoring.pipeline",
    "image_list": "scoring.pipeline",
    "score_images": "scoring.pipeline",
    "COMBINES": "scoring.reduce",
    "reduce_segments": "scoring.reduce",
    "reduce_tiles": "scoring.reduce",
    "HeadResult": "scoring.results",
}

__all__ = sorted([*_EXPORTS, "__version__"])


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
