"""CityClassifier Load Images: a folder of images as a list (any sizes), with their file paths.

The core folder loaders give one batch of one size and no paths; tagging a
dataset needs both. Files are decoded like the `cityclf` command decodes them
(EXIF rotation, transparency on white, 16-bit, CMYK); files that cannot be read
are skipped and reported on the node, not fatal.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..cityclf_core import ConfigError
from ..cityclf_core.confined import Area
from ..cityclf_core.numbers import COUNT_OR_ZERO
from ..cityclf_core.scoring.images import iter_decoded, walk_images
from . import comfy_bridge as bridge
from .common import CATEGORY, Output, declare_outputs
from .paths import allowed_roots, confine


def resolve_folder(folder: str) -> str:
    """The folder, resolved (relative to ComfyUI's input folder) and confined to the allowed roots."""
    path = confine(folder, "folder")
    if not os.path.isdir(path):
        raise ConfigError(f"folder {folder!r} does not exist; give a folder inside ComfyUI's input folder "
                          "(relative, or absolute)")
    return path


class CityClfLoadImages:
    """Loads every image in a folder (sorted, optionally recursive) as a list, plus their paths."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": ("STRING", {
                    "default": "",
                    "tooltip": "A folder of images inside ComfyUI's input folder (relative to it, or absolute; also the "
                               "output folder, and folders the server's owner lists in CITYCLF_ALLOWED_ROOTS)."}),
                "recursive": ("BOOLEAN", {"default": False, "tooltip": "Also load images in subfolders."}),
                "limit": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                  "tooltip": "Load at most this many images (in name order); 0 loads all."}),
                "skip": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                 "tooltip": "Skip this many images first, to work through a large folder in parts."}),
            },
        }

    OUTPUTS = [
        Output("IMAGE", "images", True,
               "The images, one list item each (sizes may differ); nodes that take a batch run once per image."),
        Output("STRING", "paths", True, "The full path of each image, in the same order (for Tag's sidecars)."),
        Output("INT", "count", False, "How many images were loaded."),
    ]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, OUTPUT_TOOLTIPS = declare_outputs(OUTPUTS)
    OUTPUT_NODE = False
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a folder of images of any sizes, with their paths; unreadable files are skipped and listed."

    @classmethod
    def IS_CHANGED(cls, folder, recursive=False, limit=0, skip=0):
        """Re-run when files are added, removed or changed."""
        try:
            files = cls._listed(folder, recursive)[1]
            return [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files]
        except (ConfigError, OSError):
            return float("nan")

    @staticmethod
    def _listed(folder, recursive) -> tuple[str, list[Path], list[str]]:
        """(the folder, its image files inside the allowed roots, [why each other one was left out]).

        The folder is listed through a descriptor walked from its root without following links, and each
        subfolder is opened relative to its parent's, so a folder swapped for a link to elsewhere while this
        runs is refused or left out: no name from outside is ever listed."""
        path = resolve_folder(folder)
        area = Area(allowed_roots())
        try:
            with area, area.folder(path, what=f"folder {folder!r}") as opened:
                found, problems = walk_images(opened, recursive)
        except OSError as e:  # removed or made unreadable since it was checked
            raise ConfigError(f"folder {folder!r} cannot be listed ({e.strerror or e}); check it and run again") \
                from None
        files, left_out = [], [f"{p}: {why}" for p, why in problems]
        for p in found:
            if os.path.islink(p) and not area.allows(p):  # a link in the folder, to a file elsewhere
                left_out.append(f"{p}: a link to a file outside the allowed folders; not read")
            else:
                files.append(p)
        return path, files, left_out

    def load(self, folder, recursive=False, limit=0, skip=0):
        skip, limit = COUNT_OR_ZERO.check(skip, "skip"), COUNT_OR_ZERO.check(limit, "limit")
        where, files, left_out = self._listed(folder, recursive)
        files = files[skip:]
        if limit:
            files = files[:limit]
        images, paths, problems = [], [], list(left_out)
        bar = bridge.progress_bar(len(files))
        area = Area(allowed_roots())  # each file is read through a walk from its root that follows no link
        for n, (path, decoded, error) in enumerate(iter_decoded(files, workers=2, opener=area.open_file), start=1):
            bridge.check_interrupt()
            bar.update_absolute(n, len(files))
            if error:
                problems.append(error)
                continue
            images.append((decoded.pixels.float() / 255.0).unsqueeze(0).to(torch.float32))
            paths.append(str(path))
        if not images:
            raise ConfigError(f"no readable images in {where}" +
                              (f" ({len(problems)} skipped: {problems[0]})" if problems else ""))
        text = [f"loaded {len(images)} image(s)"] + [f"skipped {p}" for p in problems]
        return {"ui": {"text": text}, "result": (images, paths, len(images))}
