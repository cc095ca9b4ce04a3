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

from .catalogue import (
    KNOWN_CLIPS,
    RELEASES,
    VIT_L14,
    VIT_L14_336,
    ClipModel,
    Release,
    default_models_dir,
    default_policy,
    download_release,
    find_release,
    identify,
    load_head,
    paired_clip,
    resolve_head,
)
from .crops import (
    FIVE_CROP,
    FIVE_CROP_NO_UPSCALE,
    MAX_SIDE,
    WHOLE_IMAGE,
    CropPlan,
    CropPolicy,
    plan_crops,
    render_views,
)
from .embedding import ClipPass, iter_embeddings
from .encoders import ComfyClipVisionEncoder, Encoder, TransformersClipEncoder, pick_device, pick_dtype
from .errors import (
    CityClfError,
    ConfigError,
    DownloadError,
    ImageError,
    StoreError,
    WeightsError,
)
from .heads import Head, HeadConfig, HeadNet, load_head_file, save_head
from .kinds import HeadKind, get_kind, kind_names, register_kind, unregister_kind
from .images import DecodedImage, decode_image, find_images, iter_decoded
from .pipeline import (
    TILING_MODES,
    HeadBinding,
    ScoringModel,
    apply_heads,
    image_list,
    score_images,
)
from .reduce import COMBINES, reduce_segments, reduce_tiles
from .results import HeadResult

__version__ = "0.2.0"

__all__ = [
    "COMBINES",
    "FIVE_CROP",
    "FIVE_CROP_NO_UPSCALE",
    "KNOWN_CLIPS",
    "MAX_SIDE",
    "RELEASES",
    "TILING_MODES",
    "VIT_L14",
    "VIT_L14_336",
    "WHOLE_IMAGE",
    "CityClfError",
    "ClipModel",
    "ClipPass",
    "ComfyClipVisionEncoder",
    "ConfigError",
    "CropPlan",
    "CropPolicy",
    "DecodedImage",
    "DownloadError",
    "Encoder",
    "Head",
    "HeadBinding",
    "HeadConfig",
    "HeadKind",
    "HeadNet",
    "HeadResult",
    "ImageError",
    "Release",
    "ScoringModel",
    "StoreError",
    "TransformersClipEncoder",
    "WeightsError",
    "__version__",
    "apply_heads",
    "decode_image",
    "default_models_dir",
    "default_policy",
    "download_release",
    "find_images",
    "find_release",
    "get_kind",
    "identify",
    "image_list",
    "iter_decoded",
    "iter_embeddings",
    "kind_names",
    "load_head",
    "load_head_file",
    "paired_clip",
    "pick_device",
    "pick_dtype",
    "plan_crops",
    "reduce_segments",
    "reduce_tiles",
    "register_kind",
    "render_views",
    "resolve_head",
    "save_head",
    "score_images",
    "unregister_kind",
]
