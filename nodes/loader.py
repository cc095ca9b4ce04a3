"""Load CityClassifier: a head (from models/cityclassifiers or the catalogue) bound to a CLIP."""

from __future__ import annotations

from ..cityclf_core import (
    RELEASES,
    ComfyClipVisionEncoder,
    ScoringModel,
    pick_dtype,
    resolve_head,
)
from ..cityclf_core.loading import clip_source_for, load_encoder
from . import comfy_bridge as bridge
from .common import CATEGORY, MODEL_TYPE

AUTO_CLIP = "auto (the head's pairing)"
HUB_CLIPS = ["openai/clip-vit-large-patch14-336", "openai/clip-vit-large-patch14"]


def head_choices() -> list[str]:
    """Local head files, then every catalogue release by file name (downloaded on first use)."""
    local = bridge.head_files()
    names = {n.replace("\\", "/").split("/")[-1] for n in local}
    return local + [r.filename for r in RELEASES if r.filename not in names]


def clip_choices() -> list[str]:
    return [AUTO_CLIP, *HUB_CLIPS, *bridge.clip_folders()]


class CityClfLoader:
    """Loads one head and its CLIP; chain `add_to` to build a model of several heads."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "head": (head_choices(), {
                    "tooltip": "The head: a .safetensors file in models/cityclassifiers, or a released model "
                               "(CityAesthetics, CCAnime-*) which is downloaded there on first use. Released "
                               "files are recognised by checksum, even renamed, for their labels and CLIP."}),
                "clip": (clip_choices(), {
                    "default": AUTO_CLIP,
                    "tooltip": "The CLIP to run the head on, when no CLIP_VISION is connected. 'auto' uses the "
                               "CLIP the head was made with (from the catalogue; ViT-L/14-336 for unknown heads). "
                               "Folders are transformers CLIPs under models/cityclassifiers/clip or clip_vision."}),
                "pairing": (["best", "alternative"], {
                    "default": "best",
                    "tooltip": "For releases with two known pairings: 'best' is the CLIP and tiles the head was "
                               "trained with; 'alternative' is the public demo's (chromatic aberration on "
                               "ViT-L/14-336 with 672 px tiles)."}),
                "precision": (["auto", "fp32", "fp16", "bf16"], {
                    "default": "auto",
                    "tooltip": "CLIP precision. auto: bf16/fp16 on a GPU, fp32 on the CPU. Heads always run in fp32."}),
                "download_missing": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Download a released head or hub CLIP from Hugging Face when it is not on disk "
                               "(checksum verified). Off: fail with a message saying what to download where."}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {
                    "tooltip": "Optional: a CLIP from the core Load CLIP Vision node (e.g. ViT-L/14-336 "
                               "safetensors in models/clip_vision). Overrides the clip choice."}),
                "add_to": (MODEL_TYPE, {
                    "tooltip": "Optional: a model from another loader; this head is added to it, so several heads "
                               "score in one pass and heads on the same CLIP share its embeddings."}),
            },
        }

    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded head(s) with their CLIP, for the Predict and Tag nodes.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads a CityClassifiers head (aesthetic score, chromatic aberration, compression, or your own) "
                   "and the CLIP it runs on. Stays loaded between queue runs.")

    def load(self, head, clip=AUTO_CLIP, pairing="best", precision="auto", download_missing=True,
             clip_vision=None, add_to=None):
        loaded = resolve_head(
            bridge.head_path(head) or head,
            search_dirs=bridge.model_paths(),
            download_dir=bridge.download_dir(),
            allow_download=download_missing,
        )
        if clip_vision is not None:
            encoder = ComfyClipVisionEncoder(clip_vision)
        else:
            source = clip_source_for(loaded, None if clip == AUTO_CLIP else clip, pairing)
            run_on, wait_on = bridge.clip_devices()
            # loaded where it waits; ComfyUI's model manager moves it to run_on for each run
            encoder = load_encoder(source, device=str(wait_on), dtype=pick_dtype(precision, run_on),
                                   allow_download=download_missing, download_dir=bridge.clip_download_dir())
            bridge.manage_encoder(encoder)
        model = ScoringModel(add_to.bindings if add_to is not None else ())
        model.add(loaded, encoder, pairing=pairing)
        return (model,)
