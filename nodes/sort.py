"""CityClassifier Sort: reorder images by score and keep the top K, carrying latents and masks."""

from __future__ import annotations

import json
import math

from ..cityclf_core.numbers import COUNT_OR_ZERO
from . import comfy_bridge as bridge
from .batches import check_count, flat_floats, images_in, latent_items, mask_items, stack_latents, stack_runs
from .common import CATEGORY, Output, declare_outputs, first

ORDERS = ["best first", "worst first"]


def ranking(scores: list[float], best_first: bool) -> list[int]:
    """Indices by score (stable for ties: input order); NaN scores always last."""
    def key(i):
        s = scores[i]
        if math.isnan(s):
            return (1, 0.0)
        return (0, -s if best_first else s)

    return sorted(range(len(scores)), key=key)


class CityClfSort:
    """Sorts a batch (or list) of images by score; top_k keeps only the first K."""

    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images that were scored (a batch, or a list of sizes)."}),
                "scores": ("FLOAT", {
                    "forceInput": True,
                    "tooltip": "One score per image, in the same order: the Predict node's score output."}),
                "order": (ORDERS, {
                    "default": "best first",
                    "tooltip": "best first: highest score first. worst first: lowest first (e.g. to keep the least "
                               "compressed with a classifier's score)."}),
                "top_k": ("INT", {
                    "default": 0, "min": 0, "max": 100000,
                    "tooltip": "Keep only the first K after sorting (best-of-N). 0 keeps all."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "Optional: the latents of these images; they follow their images."}),
                "mask": ("MASK", {"tooltip": "Optional: one mask per image; each follows its image."}),
            },
        }

    OUTPUTS = [
        Output("IMAGE", "images", True,
               "The images in score order (the first K with top_k); images of one size stay one batch."),
        Output("LATENT", "latent", True, "Their latents, in the same order."),
        Output("MASK", "mask", True, "Their masks, in the same order."),
        Output("FLOAT", "scores", True, "Their scores, in the same order."),
        Output("STRING", "indices", False, "Where each output image was in the input (0-based), as a JSON list."),
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS = declare_outputs(OUTPUTS)
    FUNCTION = "sort"
    CATEGORY = CATEGORY
    DESCRIPTION = "Orders images by score and keeps the best K (best-of-N), with their latents and masks."

    def sort(self, images, scores, order="best first", top_k=0, latent=None, mask=None):
        items = images_in(images)
        values = flat_floats(scores)
        check_count(len(items), len(values), "scores")
        latents = latent_items(latent, len(items))
        masks = mask_items(mask, len(items))
        keep = ranking(values, first(order) != "worst first")
        k = COUNT_OR_ZERO.check(first(top_k, 0) or 0, "top_k")
        if k:
            keep = keep[:k]
        text = [f"order {keep}; scores " + ", ".join(f"{values[i]:.3f}" for i in keep)]
        if not keep:
            b = bridge.blocker()
            return {"ui": {"text": ["no images"]}, "result": (b, b, b, [], "[]")}
        out_lat = stack_latents([latents[i] for i in keep]) if latents is not None else bridge.message_blocker(
            "the Sort node's latent input is not connected")
        out_mask = stack_runs([masks[i] for i in keep]) if masks is not None else bridge.message_blocker(
            "the Sort node's mask input is not connected")
        return {"ui": {"text": text},
                "result": (stack_runs([items[i] for i in keep]), out_lat, out_mask, [values[i] for i in keep],
                           json.dumps(keep))}
