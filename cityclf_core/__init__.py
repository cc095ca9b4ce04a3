"""cityclf_core: score and classify anime images with the CityClassifiers heads on CLIP.

The library behind the ComfyUI node pack and the `cityclf` command. It has no
ComfyUI imports. One path for the data (see pipeline.py):

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
    COMBINES,
    FIVE_CROP,
    FIVE_CROP_NO_UPSCALE,
    MAX_SIDE,
    WHOLE_IMAGE,
    CropPlan,
    CropPolicy,
    plan_crops,
    reduce_tiles,
    render_views,
)
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
from .images import DecodedImage, decode_image, find_images, iter_decoded
from .pipeline import (
    TILING_MODES,
    HeadBinding,
    HeadResult,
    ScoringModel,
    apply_heads,
    image_list,
    iter_embeddings,
    score_images,
)

__version__ = "0.1.0"

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
    "identify",
    "image_list",
    "iter_decoded",
    "iter_embeddings",
    "load_head",
    "load_head_file",
    "paired_clip",
    "pick_device",
    "pick_dtype",
    "plan_crops",
    "reduce_tiles",
    "render_views",
    "resolve_head",
    "save_head",
    "score_images",
]
