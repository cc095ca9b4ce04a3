"""CityClassifier Tag: several heads, one CLIP pass -> per-image caption tags (and optional sidecars)."""

from __future__ import annotations

import json
import os

from ..cityclf_core import COMBINES, ConfigError, image_list
from ..cityclf_core.sidecars import sidecar_path, update_sidecars
from ..cityclf_core.tags import BUCKETS, TagRules, owner
from . import comfy_bridge as bridge
from .paths import allowed_roots, confine
from .common import CATEGORY, MODEL_TYPE, TILING_CHOICES, Output, declare_outputs, first


def path_list(paths) -> list[str]:
    """Paths from a multiline widget (one per line) or a list of STRINGs from another node."""
    out: list[str] = []
    for p in paths if isinstance(paths, list) else [paths]:
        if p is None:
            continue
        out.extend(line.strip() for line in str(p).splitlines() if line.strip())
    return out


def sidecar_state(files: list[str]) -> list:
    """What the sidecars of `files` look like now (size and mtime, or absent), for IS_CHANGED."""
    state = []
    for f in files:
        try:
            st = os.stat(sidecar_path(f))
            state.append((f, st.st_size, st.st_mtime_ns))
        except OSError:
            state.append((f, None))
    return state


class CityClfTag:
    """Turns every head's verdict into tags, e.g. 'aesthetic_70, jpeg_artifacts', per image."""

    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "Head(s) from Load CityClassifier; chain loaders for several."}),
                "images": ("IMAGE", {"tooltip": "Images to tag: a batch, or a list of images of different sizes."}),
                "thresholds": ("STRING", {
                    "default": "0.5",
                    "tooltip": "A classifier tags a class when its probability reaches this. One number for all "
                               "heads, or per head: 'CCAnime-Compression = 0.6; * = 0.5'."}),
                "score_bucket": (list(BUCKETS), {
                    "default": "decile",
                    "tooltip": "What a score head adds: none; decile (aesthetic_70 for 0.70-0.79); percent "
                               "(aesthetic_72)."}),
                "tag_names": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": "Rename tags, one per line: 'CCAnime-Compression:JPEG = jpeg' (head:class) or "
                               "'CityAesthetics = score' (a score head's prefix). '= ' with nothing drops a tag. "
                               "Defaults: jpeg_artifacts, webp_artifacts, chromatic_aberration, aesthetic_NN."}),
                "separator": ("STRING", {"default": ", ", "tooltip": "Between tags in the tag string."}),
                "tiling": (TILING_CHOICES, {"default": "auto",
                                            "tooltip": "As in Predict: auto is per head (classifiers tile)."}),
                "combine": (list(COMBINES), {"default": "mean",
                                             "tooltip": "How tiles are combined per class, as in Predict."}),
                "write_sidecars": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Also write the tags to <image>.txt beside each file in 'paths'. Safe to rerun: "
                               "earlier tags of these heads are replaced, other text in the file is kept. "
                               "Only inside ComfyUI's input and output folders (and CITYCLF_ALLOWED_ROOTS)."}),
            },
            "optional": {
                "paths": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": "The image files, one per line, in the order of the images (or a list of paths "
                               "from a loader node). Needed only for write_sidecars."}),
            },
        }

    OUTPUTS = [
        Output("STRING", "tags", True, "One tag string per image, ready for a caption file."),
        Output("STRING", "tag_list", True, "The same tags per image as a JSON list of strings."),
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS = declare_outputs(OUTPUTS)
    OUTPUT_NODE = True
    FUNCTION = "tag"
    CATEGORY = CATEGORY
    DESCRIPTION = "Tags images for datasets from several heads in one CLIP pass; can update caption sidecars."

    @classmethod
    def IS_CHANGED(cls, write_sidecars=False, paths=None, **_):
        """With write_sidecars on, run again when a sidecar was edited or deleted since the last run.

        ComfyUI hands IS_CHANGED only the widget values: when `paths` comes from another node
        (Load Images), the sidecars cannot be listed here, so the node always runs again."""
        if not first(write_sidecars, False):
            return ""
        if paths is None or (isinstance(paths, (list, tuple)) and all(p is None for p in paths)):
            return float("nan")  # linked paths (ComfyUI passes (None,)): unknown here; NaN never equals itself
        return sidecar_state(path_list(paths))

    def tag(self, model, images, thresholds="0.5", score_bucket="decile", tag_names="", separator=", ",
            tiling="auto", combine="mean", write_sidecars=False, paths=None):
        model = first(model)
        rules = TagRules.from_text(first(tag_names, ""), first(thresholds, "0.5"), first(score_bucket, "decile"))
        flat = image_list(images)
        files = path_list(paths)
        writing = bool(first(write_sidecars, False))
        if writing and len(files) != len(flat):
            raise ConfigError(f"write_sidecars needs one path per image: got {len(flat)} image(s) and "
                              f"{len(files)} path(s) in 'paths'")
        roots = allowed_roots() if writing else []
        if writing:  # every path is checked before any sidecar is written
            files = [confine(f, "paths: image", roots) for f in files]
        if not flat:
            return {"ui": {"text": ["no images"]}, "result": ([], [])}
        bar = bridge.progress_bar(len(flat))
        results = model.score(flat, tiling=first(tiling, "auto"), combine=first(combine, "mean"),
                              on_progress=bridge.progress_callback(bar))
        sep = first(separator, ", ")
        per_image = [rules.tags_for(r) for r in results]
        text = [f"#{i}: {sep.join(t) or '(no tags)'}" for i, t in enumerate(per_image)]
        if writing:
            report = update_sidecars(zip(files, per_image), owner(rules, results), allowed_roots=roots)
            text.append(report.summary())
            text += [f"skipped {path}: {why}" for path, why in report.skipped]
        return {"ui": {"text": text},
                "result": ([sep.join(t) for t in per_image], [json.dumps(t, ensure_ascii=False) for t in per_image])}
