"""CityClassifier Save Image (with scores): PNGs in ComfyUI's output folder with every head's scores inside.

Saved as the core Save Image saves (numbered `prefix_00001_.png`, the prompt and
workflow embedded unless ComfyUI runs with --disable-metadata), plus our record
(`cityclf`) and the `aesthetic_score` key image browsers read, written by the
same code as `cityclf ... --write-metadata`. The file name may carry each
image's score, label and head: `%score%` is zero-padded (0.873 -> 873) so that
names sort by score.
"""

from __future__ import annotations

import io
import json
import math
import os
import re

import numpy as np

from ..cityclf_core import ConfigError
from ..cityclf_core.confined import Area, Folder, Outside, default_mode
from ..cityclf_core.containers import set_metadata
from ..cityclf_core.image_metadata import build_record
from . import comfy_bridge as bridge
from .batches import images_in
from .common import CATEGORY, Output, declare_outputs, first
from .paths import is_allowed, refusal

PLACEHOLDERS = ("%score%", "%label%", "%head%")


def score_text(score) -> str:
    """0.873 -> '873': three digits, so that file names sort by score (1.0 is written 999, NaN as 'nan')."""
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        return "nan"
    return f"{min(999, max(0, round(score * 1000))):03d}"


def name_part(text: str) -> str:
    """A label or head name made safe for a file name: letters, digits, '.', '-' kept; the rest '_'."""
    return re.sub(r"[^0-9A-Za-z.\-]+", "_", str(text)).strip("_.") or "_"


def pick_head(heads: dict, wanted: str) -> str:
    """The head whose score and label fill the placeholders: `wanted` (a name or its start), else the first
    score head (an aesthetic score), else the first head."""
    if wanted:
        matches = [n for n in heads if n == wanted] or [n for n in heads if n.startswith(wanted)]
        if not matches:
            raise ConfigError(f"head {wanted!r} is not in the json input; it has: {', '.join(heads)}")
        return matches[0]
    return next((n for n, h in heads.items() if h.get("arch") == "score"), next(iter(heads)))


def expand_prefix(prefix: str, head: str, entry: dict) -> str:
    return (prefix.replace("%score%", score_text(entry.get("score")))
            .replace("%label%", name_part(entry.get("label", "")))
            .replace("%head%", name_part(head)))


def png_bytes(image, prompt, extra_pnginfo) -> bytes:
    """One IMAGE [H, W, C] as a PNG with the prompt and workflow as ComfyUI's Save Image writes them."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    arr = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
    info = None
    if not bridge.metadata_disabled():
        info = PngInfo()
        if prompt is not None:
            info.add_text("prompt", json.dumps(prompt))
        for key, value in (extra_pnginfo or {}).items():
            info.add_text(key, json.dumps(value))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


def write_new(folder: Folder, stem: str, counter: int, data: bytes) -> str:
    """Write `data` as `stem_NNNNN_.png` in `folder` (opened confined: no link followed on the way from the output
    folder) under the first free number from `counter`, never over a file."""
    while True:
        name = f"{stem}_{counter:05}_.png"
        try:
            fd = folder.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, default_mode())
        except FileExistsError:
            counter += 1
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return name


class CityClfSave:
    """Saves images as PNG with their scores in the file, named by score if you like."""

    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The scored images (a batch or a list), in the order Predict saw."}),
                "json": ("STRING", {
                    "forceInput": True,
                    "tooltip": "Predict's json output: one per image, every head's scores. Written into each "
                               "PNG (a 'cityclf' text chunk and the 'aesthetic_score' key image browsers read)."}),
                "filename_prefix": ("STRING", {
                    "default": "cityclf/%score%_%label%",
                    "tooltip": "As Save Image's (subfolders with '/', %date:yyyy-MM-dd% etc.), plus %score% "
                               "(zero-padded: 0.873 -> 873, so names sort by score), %label% and %head% of each "
                               "image. Stays inside ComfyUI's output folder."}),
            },
            "optional": {
                "head": ("STRING", {
                    "default": "",
                    "tooltip": "Which head fills %score%, %label% and %head% (name or its start). Empty: the "
                               "first score head (an aesthetic score), else the first head."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    OUTPUTS = [
        Output("STRING", "paths", True,
               "The saved files' full paths, in input order (e.g. for Tag's paths input)."),
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS = declare_outputs(OUTPUTS)
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Saves images to the output folder as PNG with the workflow and every head's scores inside, "
                   "readable by image browsers; names can carry the score.")

    def save(self, images, json, filename_prefix="cityclf/%score%_%label%", head="", prompt=None,
             extra_pnginfo=None):
        items = images_in(images)
        payloads = [p for p in (json if isinstance(json, list) else [json]) if p is not None]
        if len(payloads) != len(items):
            raise ConfigError(f"got {len(items)} image(s) but {len(payloads)} json value(s): connect the json "
                              "output of the Predict node that scored these images")
        prefix = first(filename_prefix, "cityclf")
        wanted = (first(head, "") or "").strip()
        prompt, extra_pnginfo = first(prompt), first(extra_pnginfo)
        root = os.path.realpath(bridge.output_dir())
        saved, ui = [], []
        with Area([root]) as area:
            for image, payload in zip(items, payloads):
                heads = _heads(payload)
                name = pick_head(heads, wanted)
                height, width = image.shape[0], image.shape[1]
                folder, stem, counter, subfolder = bridge.save_image_path(expand_prefix(prefix, name, heads[name]),
                                                                          width, height)
                if not is_allowed(folder, [root]):  # the pack's confinement: links resolved
                    raise refusal(prefix, "filename_prefix: folder", [root])
                data = set_metadata(png_bytes(image, prompt, extra_pnginfo), build_record(heads))
                try:  # what is checked is what is written: the folder is walked from the root, following no link
                    with area.folder(folder, create=True, what=prefix) as opened:
                        file = write_new(opened, stem, counter, data)
                except Outside:
                    raise refusal(prefix, "filename_prefix: folder", [root]) from None
                saved.append(os.path.join(folder, file))
                ui.append({"filename": file, "subfolder": subfolder, "type": "output"})
        return {"ui": {"images": ui}, "result": (saved,)}


def _heads(payload) -> dict:
    try:
        heads = json.loads(payload) if isinstance(payload, str) else payload
    except ValueError:
        heads = None
    if not isinstance(heads, dict) or not heads or not all(
            isinstance(h, dict) and {"arch", "score", "label"} <= set(h) for h in heads.values()):
        raise ConfigError("the json input is not Predict's json output (one object per image, by head name); "
                          "connect Predict's json output")
    return heads
