"""CityClassifier Predict: IMAGE batches (or lists of sizes) -> per-image score, label and JSON."""

from __future__ import annotations

import json

from ..cityclf_core import COMBINES, image_list
from ..cityclf_core.image_metadata import provenance_of
from ..cityclf_core.numbers import COUNT_OR_ZERO
from . import comfy_bridge as bridge
from .common import CATEGORY, MODEL_TYPE, TILING_CHOICES, Output, declare_outputs, first


def summary_line(index: int, result: dict) -> str:
    return f"#{index}: " + "; ".join(f"{name}: {r.summary()}" for name, r in result.items())


class CityClfPredict:
    """Scores every image of the input (batch or list) with every head of the model in one CLIP pass."""

    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "Head(s) from a Load CityClassifier node."}),
                "images": ("IMAGE", {
                    "tooltip": "Images to score: a batch, or a list of images of different sizes. "
                               "Every image is scored, not only the first."}),
                "tiling": (TILING_CHOICES, {
                    "default": "auto",
                    "tooltip": "auto: per head, as the reference (classifiers use five tiles of 2x the CLIP size on "
                               "images whose short side is larger; score models the whole image). on/off: force it."}),
                "combine": (list(COMBINES), {
                    "default": "mean",
                    "tooltip": "How the five tiles' probabilities are combined, per class. max flags an artifact "
                               "found in any tile; mean is the reference default."}),
                "never_upscale": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "The reference resizes the short side to 1536 whenever the long side is over 1536, "
                               "which enlarges e.g. 1000x2000 to 1536x3072. On: only ever shrink."}),
            },
            "optional": {
                "head": ("STRING", {
                    "default": "",
                    "tooltip": "Which head gives the score and label outputs (name or its start). Empty: the first. "
                               "The JSON output always has every head."}),
                "score_class": ("STRING", {
                    "default": "",
                    "tooltip": "For a classifier: the class whose probability is the score (e.g. JPEG). Empty: the "
                               "probability of any non-pass class (1 - Pass)."}),
                "batch_size": ("INT", {
                    "default": 0, "min": 0, "max": 1024,
                    "tooltip": "Views per CLIP forward; 0 picks one for the device (64 on GPU, 4 on CPU). "
                               "Lower it if the GPU runs out of memory."}),
            },
        }

    OUTPUTS = [
        Output("FLOAT", "score", True,
               "One score in 0..1 per image, in input order: a score head's score, or a classifier's probability "
               "of its non-pass classes (or of score_class). Feed it to Gate or Sort."),
        Output("STRING", "label", True,
               "One label per image: the classifier's most likely class, or the score as a percentage."),
        Output("STRING", "json", True,
               "One JSON object per image with every head's score, label and class probabilities (and its file's "
               "sha256 and CLIP). Feed it to Show or to Save Image (with scores)."),
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS = declare_outputs(OUTPUTS)
    # An output node, so that Load -> Predict alone is a runnable prompt (its scores show on the node);
    # its outputs still feed Gate, Sort and Show mid-graph.
    OUTPUT_NODE = True
    FUNCTION = "predict"
    CATEGORY = CATEGORY
    DESCRIPTION = "Scores and classifies images with CityClassifiers heads, with five-crop tiling."

    def predict(self, model, images, tiling="auto", combine="mean", never_upscale=False, head=None,
                score_class=None, batch_size=None):
        model = first(model)
        tiling, combine = first(tiling, "auto"), first(combine, "mean")
        upscale = not first(never_upscale, False)
        head_name = model.head_name((first(head, "") or "").strip())
        score_class = (first(score_class, "") or "").strip()
        batch_size = COUNT_OR_ZERO.check(first(batch_size, 0) or 0, "batch_size") or None

        flat = image_list(images)
        if not flat:
            return {"ui": {"text": ["no images"]}, "result": ([], [], [])}
        bar = bridge.progress_bar(len(flat))
        results = model.score(flat, tiling=tiling, combine=combine, upscale=upscale, batch_size=batch_size,
                              on_progress=bridge.progress_callback(bar))
        chosen = [r[head_name] for r in results]
        scores = [c.value_of(score_class) if score_class else c.score for c in chosen]
        labels = [c.label for c in chosen]
        known = provenance_of(model)  # the head file's sha256 and the CLIP, for a Save node to record
        payload = [json.dumps({n: {**r.to_dict(), **known.get(n, {})} for n, r in res.items()}, ensure_ascii=False)
                   for res in results]
        text = [summary_line(i, r) for i, r in enumerate(results)]
        return {"ui": {"text": text}, "result": (scores, labels, payload)}
