"""CityClassifier Show: draws each image's score and label on it, for preview or saving."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np

from ..cityclf_core import ConfigError
from ..cityclf_core.annotate import caption_tensor
from ..cityclf_core.kinds import result_from_dict
from . import comfy_bridge as bridge
from .batches import flat_floats, images_in, stack_runs
from .common import CATEGORY, Output, declare_outputs, first


def lines_for(index: int, scores, labels, payloads) -> list[str]:
    """The text for image `index`: every head from Predict's JSON, else its label and/or score."""
    if payloads is not None:
        return [f"{name}: {result_from_dict(name, r).summary()}"
                for name, r in json.loads(payloads[index]).items()]
    parts = []
    if labels is not None:
        parts.append(labels[index])
    if scores is not None:
        parts.append(f"{scores[index]:.3f}")
    return [" ".join(parts)]


class CityClfShow:
    """Writes scores and labels onto the images (a dark band with white text, sized to the image)."""

    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The scored images."}),
                "position": (["bottom", "top"], {"default": "bottom", "tooltip": "Where the text band goes."}),
                "preview": ("BOOLEAN", {"default": True,
                                        "tooltip": "Also show the annotated images on this node."}),
            },
            "optional": {
                "scores": ("FLOAT", {"forceInput": True, "tooltip": "One score per image (Predict's score)."}),
                "labels": ("STRING", {"forceInput": True, "tooltip": "One label per image (Predict's label)."}),
                "json": ("STRING", {"forceInput": True,
                                    "tooltip": "Predict's json output: shows every head, one line each."}),
            },
        }

    OUTPUTS = [
        Output("IMAGE", "images", True,
               "The images with their scores written on them (same sizes; one batch per size)."),
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS = declare_outputs(OUTPUTS)
    OUTPUT_NODE = True
    FUNCTION = "show"
    CATEGORY = CATEGORY
    DESCRIPTION = "Draws each image's score and label on it, readable on small and large images."

    def show(self, images, position="bottom", preview=True, scores=None, labels=None, json=None):
        items = images_in(images)
        n = len(items)
        score_list = flat_floats(scores) if scores is not None else None
        label_list = [str(x) for x in labels] if labels is not None else None
        for what, values in (("scores", score_list), ("labels", label_list), ("json", json)):
            if values is not None and len(values) != n:
                raise ConfigError(f"got {n} image(s) but {len(values)} {what}: connect the outputs of the "
                                  "Predict node that scored these images")
        if score_list is None and label_list is None and json is None:
            raise ConfigError("connect at least one of scores, labels or json from a Predict node")
        pos = first(position, "bottom")
        out = [caption_tensor(img, lines_for(i, score_list, label_list, json), pos) for i, img in enumerate(items)]
        ui = {"images": save_previews(out)} if first(preview, True) and out else {}
        return {"ui": ui, "result": (stack_runs(out),)}


def save_previews(images) -> list[dict]:
    """Write PNGs to ComfyUI's temp folder, as its own preview node does."""
    from PIL import Image

    folder = bridge.temp_dir()
    os.makedirs(folder, exist_ok=True)
    prefix = f"cityclf_{uuid.uuid4().hex[:8]}"
    entries = []
    for i, img in enumerate(images):
        name = f"{prefix}_{i:04d}.png"
        arr = (img.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(folder, name), compress_level=1)
        entries.append({"filename": name, "subfolder": "", "type": "temp"})
    return entries
