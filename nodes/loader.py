"""Load CityClassifier: a head (from models/cityclassifiers or the catalogue) bound to a CLIP."""

from __future__ import annotations

import os

from ..cityclf_core import (
    RELEASES,
    ComfyClipVisionEncoder,
    ScoringModel,
    pick_dtype,
    resolve_head,
)
from ..cityclf_core.loading.clips import cached_encoder, clip_search_dirs, clip_source_for, locate_clip, source_name
from . import comfy_bridge as bridge
from .common import CATEGORY, MODEL_TYPE, Output, declare_outputs
from .managed_clip import InterruptibleEncoder, ManagedClipEncoder

AUTO_CLIP = "auto (the head's pairing)"
HUB_CLIPS = ["openai/clip-vit-large-patch14-336", "openai/clip-vit-large-patch14"]


def head_choices() -> list[str]:
    """Local head files, then every catalogue release by file name (downloaded on first use)."""
    local = bridge.head_files()
    names = {n.replace("\\", "/").split("/")[-1] for n in local}
    return local + [r.filename for r in RELEASES if r.filename not in names]


def clip_choices() -> list[str]:
    """auto, the hub CLIPs, then local folders by names relative to the models folder (portable)."""
    return [AUTO_CLIP, *HUB_CLIPS, *bridge.clip_folders()]


def managed_encoder(source: str, precision: str, allow_download: bool) -> InterruptibleEncoder:
    """The CLIP at `source` (a folder or a hub id, found by the library's resolver), managed by ComfyUI's
    model manager. One per (CLIP folder, dtype) while some loader's model holds it: loaders of heads on the
    same CLIP share it (one CLIP pass, one copy in memory); not pinned, so ComfyUI's cache decides its life."""
    folder, name = locate_clip(source, allow_download=allow_download, download_dir=bridge.clip_download_dir(),
                               search_dirs=bridge.clip_roots())
    run_on, _ = bridge.clip_devices()
    dtype = pick_dtype(precision, run_on)
    return cached_encoder(("comfyui", os.path.realpath(folder), str(dtype)),
                          lambda: InterruptibleEncoder(ManagedClipEncoder(folder, name, source_name(source), dtype)),
                          pin=False)


class CityClfLoader:
    """Loads one head and its CLIP; chain `add_to` to build a model of several heads."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "head": (head_choices(), {
                    "tooltip": "The head: a .safetensors file in models/cityclassifiers, or a released model "
                               "(CityAesthetics, CCAnime-*) which is downloaded there on first use. Released "
                               "files are recognised by checksum, even renamed, for their labels and CLIP. "
                               "LAION's aesthetic predictor and waifu-scorer load from their .pth files (read "
                               "weights-only, converted once to .safetensors beside them)."}),
                "clip": (clip_choices(), {
                    "default": AUTO_CLIP,
                    "tooltip": "The CLIP to run the head on, when no CLIP_VISION is connected. 'auto' uses the "
                               "CLIP the head was made with (from the catalogue or its kind: ViT-L/14 for LAION and "
                               "waifu-scorer heads; ViT-L/14-336 for unknown heads). "
                               "Folders are transformers CLIPs in models/cityclassifiers/clip or models/clip_vision, named relative "
                               "to the models folder so workflows work on other machines."}),
                "pairing": (["best", "alternative"], {
                    "default": "best",
                    "tooltip": "For releases with two known pairings: 'best' is the CLIP and tiles the head was "
                               "trained with; 'alternative' is the public demo's (chromatic aberration on "
                               "ViT-L/14-336 with 672 px tiles)."}),
                "precision": (["auto", "fp32", "fp16", "bf16"], {
                    "default": "auto",
                    "tooltip": "CLIP precision. auto: bf16/fp16 on a GPU, fp32 on the CPU. Heads always run in fp32. "
                               "Ignored when clip_vision is connected: that CLIP keeps the precision Load CLIP "
                               "Vision gave it (the node says so)."}),
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

    OUTPUTS = [
        Output(MODEL_TYPE, "model", False, "The loaded head(s) with their CLIP, for the Predict and Tag nodes."),
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS = declare_outputs(OUTPUTS)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads a CityClassifiers head (aesthetic score, chromatic aberration, compression, or your own) "
                   "and the CLIP it runs on. Stays loaded between queue runs.")

    @classmethod
    def VALIDATE_INPUTS(cls, clip):
        """Names from the list, and absolute folders saved by older versions while they still resolve."""
        if clip in (AUTO_CLIP, *HUB_CLIPS) or bridge.clip_folder(clip):
            return True
        known = ", ".join(bridge.clip_folders()) or "none found"
        return (f"clip {clip!r} is not a CLIP this server has: put the transformers CLIP folder in "
                f"models/cityclassifiers/clip/ (folders found: {known}), or pick auto or a hub id")

    def load(self, head, clip=AUTO_CLIP, pairing="best", precision="auto", download_missing=True,
             clip_vision=None, add_to=None):
        loaded = resolve_head(
            bridge.head_path(head) or head,
            search_dirs=bridge.model_paths(),
            download_dir=bridge.download_dir(),
            allow_download=download_missing,
        )
        notes = []
        if clip_vision is not None:
            encoder = InterruptibleEncoder(ComfyClipVisionEncoder(clip_vision))
            if precision != "auto":
                notes.append(f"precision {precision} not applied: a connected CLIP_VISION runs at the precision "
                             "Load CLIP Vision gave it (fp16 on most devices)")
        else:
            if clip == AUTO_CLIP:
                source = clip_source_for(loaded, None, pairing, clip_search_dirs(loaded, bridge.clip_roots(),
                                                                                  bridge.model_paths()))
            else:
                source = bridge.clip_folder(clip) or clip
            encoder = managed_encoder(source, precision, download_missing)
        model = ScoringModel(add_to.bindings if add_to is not None else ())
        model.add(loaded, encoder, pairing=pairing)
        text = [f"{b.name} on {b.encoder.name}" for b in model.bindings] + notes
        return {"ui": {"text": text}, "result": (model,)}
