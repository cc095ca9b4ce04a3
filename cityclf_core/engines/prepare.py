"""One file, read once: stat, hash, decode and the uint8 views each (CLIP, crop policy) target needs.

The pure CPU step of embedding, shared by every engine: the Ray engine runs it
in CPU tasks; the local engine's reader (dataset/reader.py) does the same in its threads.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..crops import CropPlan, render_views
from ..errors import ImageError
from ..images import DEFAULT_MAX_PIXELS, decode_image, reason_for
from ..embedding import to_bchw

#: (plan(height, width, content) -> CropPlan, CLIP input size) for one target
Planner = tuple[Callable[[int, int, str], CropPlan], int]


@dataclass
class PreparedFile:
    path: str
    size: int | None = None
    mtime_ns: int | None = None
    content: str | None = None  # sha256 of the file's bytes
    width: int | None = None  # as stored in the file (None when not decoded: nothing was needed)
    height: int | None = None
    notes: list[str] = field(default_factory=list)
    views: dict[int, torch.Tensor] = field(default_factory=dict)  # target index -> uint8 [n, 3, S, S]
    error: str | None = None  # why the file is skipped, in the words a local run reports


def prepare_file(
    path: str,
    planners: Sequence[Planner],
    needed: Callable[[str], Sequence[int]] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreparedFile:
    """Read, hash and (if any target still needs this content) decode `path` and render its views.

    `needed(content)` says which target indices lack embeddings of this content
    (default: all); when none do, the file is hashed but not decoded. Errors are
    caught and returned in `error`, never raised.
    """
    item = PreparedFile(path)
    try:
        st = os.stat(path)
        item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
        with open(path, "rb") as f:
            data = f.read()
        item.content = hashlib.sha256(data).hexdigest()
        wanted = list(needed(item.content)) if needed is not None else list(range(len(planners)))
        if not wanted:
            return item
        decoded = decode_image(path, max_pixels=max_pixels, data=data)
        item.width, item.height = decoded.size
        item.notes = decoded.notes
        x = decoded.pixels
        for i in wanted:
            plan_fn, clip_size = planners[i]
            plan = plan_fn(int(x.shape[0]), int(x.shape[1]), item.content)
            views = render_views(to_bchw(x, None, path), plan, clip_size)
            item.views[i] = views.mul_(255).round_().to(torch.uint8)  # exact: views are 8-bit already
    except ImageError as e:
        item.error = reason_for(path, str(e))
    except OSError as e:
        item.error = f"cannot read it ({e.strerror or e})"
    except MemoryError:
        item.error = "not enough memory to decode it"
    return item


__all__ = ["Planner", "PreparedFile", "prepare_file"]
