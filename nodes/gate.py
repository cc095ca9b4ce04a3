"""CityClassifier Gate: split images by a score rule into passed and failed.

Rules are absolute (at least / at most / between a score) or relative to a
reference distribution (at least / at most a percentile of a reference file's
scores, as `cityclf query --min HEAD=p80 --reference FILE` selects).

An empty side is blocked (ComfyUI's execution blocker): nodes fed from it are
skipped without an error, the other side and the rest of the prompt still run,
and no placeholder image is made. "fail when none pass" stops the prompt instead.
"""

from __future__ import annotations

import json

import os

from ..cityclf_core import ConfigError
from ..cityclf_core.dataset.percentiles import ReferenceFile, percentile_of
from ..cityclf_core.numbers import THRESHOLD
from . import comfy_bridge as bridge
from .batches import check_count, finite, flat_floats, images_in, latent_items, mask_items, stack_latents, stack_runs
from .common import CATEGORY, Output, declare_outputs, first

RULES = ["at least", "at most", "between", "at least percentile", "at most percentile"]
BATCH = "(this batch)"  # percentiles of the batch's own scores, when no reference file is chosen
NO_LATENT = "the Gate's latent input is not connected; connect the LATENT these images were decoded from"
NO_MASK = "the Gate's mask input is not connected; connect a MASK with one mask per image"


def passes(rule: str, score: float, threshold: float, upper: float) -> bool:
    if not finite(score):
        return False
    if rule == "at least":
        return score >= threshold
    if rule == "at most":
        return score <= threshold
    if rule == "between":
        return threshold <= score <= upper
    raise ConfigError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")


def describe_rule(rule: str, threshold: float, upper: float) -> str:
    return f"between {threshold:g} and {upper:g}" if rule == "between" else f"{rule} {threshold:g}"


def reference_choices() -> list[str]:
    return [BATCH, *bridge.reference_files()]


def percentile_threshold(rule: str, percentile: float, values: list[float], reference: str,
                         head: str) -> tuple[str, float, str]:
    """A percentile rule turned into its absolute rule: (rule, score threshold, how it was found)."""
    if not 0 <= percentile <= 100:
        raise ConfigError(f"rule {rule!r}: threshold is the percentile, from 0 to 100; got {percentile:g}")
    if reference in ("", BATCH, None):
        value = percentile_of([v for v in values if finite(v)], percentile, "the batch's scores")
        where = "of this batch"
    else:
        path = bridge.reference_files().get(reference)
        if path is None:
            raise ConfigError(f"reference {reference!r} is not in models/{bridge.MODEL_FOLDER}/"
                              f"{bridge.REFERENCE_SUBFOLDER}/; make one with: cityclf percentiles --store DB --out "
                              f"{reference}, and put it there")
        ref = ReferenceFile.read(path)
        name, _, label = (head or "").partition(":")
        heads = ref.heads()
        if not name:
            if len(heads) != 1:
                raise ConfigError(f"reference {reference} has several heads ({', '.join(heads)}): name the one "
                                  "these scores come from in reference_head")
            name = heads[0]
        value = ref.quantile(name.strip(), label.strip() or None, percentile)
        where = f"of {name}{':' + label if label else ''} in {reference}"
    base = rule.replace(" percentile", "")
    return base, value, f"{base} p{percentile:g} {where} (= {value:.4g})"


def split_outputs(images, latents, masks, indices):
    """(images, latent, mask) outputs for the chosen indices; blocked when there are none."""
    if not indices:
        return bridge.blocker(), bridge.blocker(), bridge.blocker()
    imgs = stack_runs([images[i] for i in indices])
    lat = stack_latents([latents[i] for i in indices]) if latents is not None else bridge.message_blocker(NO_LATENT)
    msk = stack_runs([masks[i] for i in indices]) if masks is not None else bridge.message_blocker(NO_MASK)
    return imgs, lat, msk


class CityClfGate:
    """Passes images whose score meets a rule; the rest go to the failed outputs."""

    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images that were scored (a batch or a list)."}),
                "scores": ("FLOAT", {
                    "forceInput": True,
                    "tooltip": "One score per image, in the same order: the Predict node's score output."}),
                "rule": (RULES, {
                    "default": "at least",
                    "tooltip": "Which images pass: score at least / at most the threshold, or between threshold "
                               "and upper (absolute, in the score's own units). The percentile rules read "
                               "threshold as a percentile (80: the 80th) of the reference's scores."}),
                "threshold": ("FLOAT", {
                    "default": 0.5, "min": -1e9, "max": 1e9, "step": 0.01,
                    "tooltip": "The score an image must reach (at least), stay under (at most), or the lower "
                               "bound (between). Aesthetic scores: 0.5 is 'above average' in the model's brackets."}),
                "upper": ("FLOAT", {
                    "default": 1.0, "min": -1e9, "max": 1e9, "step": 0.01,
                    "tooltip": "The upper bound for 'between' (inclusive); ignored by the other rules."}),
                "fail_when_none_pass": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Off: when no image passes, the passed outputs are blocked and nodes fed from them "
                               "are skipped quietly. On: stop the prompt with an error instead."}),
            },
            "optional": {
                "reference": (reference_choices(), {
                    "default": BATCH,
                    "tooltip": "For the percentile rules: a reference file from models/cityclassifiers/reference/ "
                               "(cityclf percentiles --store DB --out FILE.json), so the threshold is set by your "
                               "dataset, not by this batch. (this batch): the batch's own scores."}),
                "reference_head": ("STRING", {
                    "default": "",
                    "tooltip": "The head (or HEAD:CLASS) in the reference file that these scores come from. Empty: "
                               "the file's only head."}),
                "latent": ("LATENT", {
                    "tooltip": "Optional: the latents of these images (same batch size); they follow their images."}),
                "mask": ("MASK", {"tooltip": "Optional: one mask per image; each follows its image."}),
            },
        }

    OUTPUTS = [
        Output("IMAGE", "passed", True, "Images that passed, in input order (blocked when none did)."),
        Output("IMAGE", "failed", True, "Images that failed, in input order (blocked when none did)."),
        Output("LATENT", "passed_latent", True, "The latents of the passed images."),
        Output("LATENT", "failed_latent", True, "The latents of the failed images."),
        Output("MASK", "passed_mask", True, "The masks of the passed images."),
        Output("MASK", "failed_mask", True, "The masks of the failed images."),
        Output("STRING", "passed_indices", False,
               "Indices (0-based, in the input) of the passed images, as a JSON list."),
        Output("STRING", "failed_indices", False, "Indices of the failed images, as a JSON list."),
        Output("INT", "passed_count", False, "How many images passed."),
        Output("INT", "failed_count", False, "How many images failed."),
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS = declare_outputs(OUTPUTS)
    FUNCTION = "gate"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Keeps images whose score meets a rule (a score, or a percentile of your dataset's scores); blocks "
                   "an empty side instead of failing.")

    @classmethod
    def IS_CHANGED(cls, rule=None, reference=None, **_):
        """With a percentile rule and a reference file: run again when the file was rewritten."""
        path = bridge.reference_files().get(first(reference, BATCH) or BATCH)
        if "percentile" not in str(first(rule, "")) or path is None:
            return ""
        try:
            st = os.stat(path)
        except OSError:
            return float("nan")
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"

    def gate(self, images, scores, rule="at least", threshold=0.5, upper=1.0, fail_when_none_pass=False,
             reference=BATCH, reference_head="", latent=None, mask=None):
        rule = first(rule)
        threshold, upper = THRESHOLD.check(first(threshold), "threshold"), THRESHOLD.check(first(upper), "upper")
        if rule == "between" and upper < threshold:
            raise ConfigError(f"rule 'between': upper ({upper:g}) is below threshold ({threshold:g})")
        items = images_in(images)
        values = flat_floats(scores)
        check_count(len(items), len(values), "scores")
        described = None
        if rule.endswith(" percentile"):
            rule, threshold, described = percentile_threshold(rule, threshold, values, first(reference, BATCH),
                                                              (first(reference_head, "") or "").strip())
        latents = latent_items(latent, len(items))
        masks = mask_items(mask, len(items))
        passed = [i for i, s in enumerate(values) if passes(rule, s, threshold, upper)]
        failed = [i for i in range(len(items)) if i not in set(passed)]
        if not passed and first(fail_when_none_pass, False) and items:
            best = max((v for v in values if finite(v)), default=float("nan"))
            raise ConfigError(f"no image passed the gate ({described or describe_rule(rule, threshold, upper)}); "
                              f"the best score was {best:.4g}")
        p_img, p_lat, p_mask = split_outputs(items, latents, masks, passed)
        f_img, f_lat, f_mask = split_outputs(items, latents, masks, failed)
        text = [f"{len(passed)} of {len(items)} passed ({described or describe_rule(rule, threshold, upper)}): {passed}"]
        return {"ui": {"text": text},
                "result": (p_img, f_img, p_lat, f_lat, p_mask, f_mask, json.dumps(passed), json.dumps(failed),
                           len(passed), len(failed))}
