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

from ..cityclf_core import ConfigError, find_images
from ..cityclf_core.images import IMAGE_EXTENSIONS, iter_decoded
from . import comfy_bridge as bridge
from .common import CATEGORY


def resolve_folder(folder: str) -> str:
    folder = os.path.expanduser(folder.strip())
    if not os.path.isabs(folder):
        folder = os.path.join(bridge.input_dir(), folder)
    if not os.path.isdir(folder):
        raise ConfigError(f"folder {folder!r} does not exist; give an absolute path or one inside ComfyUI's input folder")
    return folder


class CityClfLoadImages:
    """Loads every image in a folder (sorted, optionally recursive) as a list, plus their paths."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": ("STRING", {
                    "default": "",
                    "tooltip": "A folder of images: an absolute path, or a path inside ComfyUI's input folder."}),
                "recursive": ("BOOLEAN", {"default": False, "tooltip": "Also load images in subfolders."}),
                "limit": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                  "tooltip": "Load at most this many images (in name order); 0 loads all."}),
                "skip": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                 "tooltip": "Skip this many images first, to work through a large folder in parts."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "STRING", "INT")
    RETURN_NAMES = ("images", "paths", "count")
    OUTPUT_IS_LIST = (True, True, False)
    OUTPUT_TOOLTIPS = (
        "The images, one list item each (sizes may differ); nodes that take a batch run once per image.",
        "The full path of each image, in the same order (for Tag's sidecars).",
        "How many images were loaded.",
    )
    OUTPUT_NODE = False
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a folder of images of any sizes, with their paths; unreadable files are skipped and listed."

    @classmethod
    def IS_CHANGED(cls, folder, recursive=False, limit=0, skip=0):
        """Re-run when files are added, removed or changed."""
        try:
            files = cls._files(folder, recursive)
        except ConfigError:
            return float("nan")
        return [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files]

    @staticmethod
    def _files(folder, recursive) -> list[Path]:
        root = Path(resolve_folder(folder))
        if recursive:
            return find_images([root])[0]
        return sorted(p for p in root.iterdir()
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))

    def load(self, folder, recursive=False, limit=0, skip=0):
        files = self._files(folder, recursive)[skip:]
        if limit:
            files = files[:limit]
        images, paths, problems = [], [], []
        bar = bridge.progress_bar(len(files))
        for n, (path, decoded, error) in enumerate(iter_decoded(files, workers=2), start=1):
            bridge.check_interrupt()
            bar.update_absolute(n, len(files))
            if error:
                problems.append(error)
                continue
            images.append((decoded.pixels.float() / 255.0).unsqueeze(0).to(torch.float32))
            paths.append(str(path))
        if not images:
            raise ConfigError(f"no readable images in {resolve_folder(folder)}" +
                              (f" ({len(problems)} skipped: {problems[0]})" if problems else ""))
        text = [f"loaded {len(images)} image(s)"] + [f"skipped {p}" for p in problems]
        return {"ui": {"text": text}, "result": (images, paths, len(images))}
