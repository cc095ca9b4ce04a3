"""The reader stage of embedding a dataset: stat, look up, hash, decode and crop one file (in worker threads).

For each file it decides what is missing from the store -- nothing when the
path, size and mtime are as stored, nothing when its content (sha256) is
already embedded (a touched, renamed or duplicated file) -- and only then
decodes it and makes the views of each CLIP pass that needs them, as uint8
(exact: views are 8-bit already), pinned when a GPU will take them.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import ImageError
from ..scoring.crops import CropPlan, render_views
from ..scoring.embedding import ClipPass, to_bchw
from ..scoring.images import DEFAULT_MAX_PIXELS, decode_image, reason_for


@dataclass
class Prepared:
    """One file, read: what the store needs to know of it and the views still to embed."""

    index: int
    path: str
    size: int | None = None
    mtime_ns: int | None = None
    content: str | None = None
    width: int | None = None
    height: int | None = None
    views: dict[int, torch.Tensor] = field(default_factory=dict)  # pass index -> uint8 views
    aliases: dict[int, int] = field(default_factory=dict)  # pass index -> the pass whose identical views it shares
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    unchanged: bool = False  # same path, size and mtime as stored, all embeddings present


#: files up to this size are read once into memory, hashed and decoded from there; larger ones are
#: hashed in a stream and decoded from the file, so memory never holds a whole large file
READ_WHOLE_BELOW = 32 << 20


def read_and_hash(path: str, size: int | None) -> tuple[str, bytes | None]:
    """(sha256 of the file, its bytes if small enough to keep), reading a large file only if it is an image.

    A large file is first identified by Pillow from its header (a few KiB): one
    that is not an image is refused without reading the rest.
    """
    if size is not None and size <= READ_WHOLE_BELOW:
        with open(path, "rb") as f:
            data = f.read()
        return hashlib.sha256(data).hexdigest(), data
    sniff_image(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest(), None


def sniff_image(path: str) -> None:
    """ImageError unless Pillow recognises the file's header as an image (reads only the header)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                pass
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image, or a format Pillow cannot read") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        pass  # an image, or something Pillow half-recognises: decoding says exactly what is wrong


class Known:
    """The contents embedded so far, per CLIP pass; shared by the reader threads and the writer."""

    def __init__(self, sets: list[set[str]]):
        self._sets = sets
        self._lock = threading.Lock()

    def missing(self, content: str) -> list[int]:
        with self._lock:
            return [i for i, k in enumerate(self._sets) if content not in k]

    def add(self, index: int, content: str) -> None:
        with self._lock:
            self._sets[index].add(content)


class FileReader:
    """`read(index, path)` -> Prepared; safe to call from several threads (each gets its own store reader)."""

    def __init__(self, store, passes: Sequence[ClipPass], known: Known, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.store, self.passes, self.known, self.max_pixels = store, list(passes), known, max_pixels
        self.plans = [(p.plan, p.encoder.image_size, p.encoder.identity) for p in self.passes]
        self.pin = any(p.encoder.device.type == "cuda" for p in self.passes)
        self._local = threading.local()
        self._readers: list = []
        self._lock = threading.Lock()

    def _stored(self, path: str):
        # sqlite connections are not shared across threads: each worker looks files up through its own
        if not hasattr(self._local, "store"):
            self._local.store = self.store.reader()
            with self._lock:
                self._readers.append(self._local.store)
        return self._local.store.file(path)

    def read(self, index: int, path: str) -> Prepared:
        return read_file(Prepared(index, path), self.plans, self.known.missing, self.max_pixels, self.pin,
                         unchanged=self._unchanged)

    def _unchanged(self, item: Prepared) -> bool:
        """Same path, size and mtime as stored, and every pass has its content: nothing to read."""
        prior = self._stored(item.path)
        if (prior is not None and prior.status == "ok" and (prior.size, prior.mtime_ns) == (item.size, item.mtime_ns)
                and not self.known.missing(prior.content)):
            item.content, item.unchanged = prior.content, True
        return item.unchanged

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers.clear()


#: how one CLIP pass cuts an image: (plan(height, width, content) -> CropPlan, CLIP input size, the CLIP's
#: identity); passes of one CLIP whose plans coincide (a small image's whole view and its "tiles") share views
Plan = tuple[Callable[[int, int, str], CropPlan], int, str]


def read_file(item: Prepared, plans: Sequence[Plan], missing: Callable[[str], list[int]],
              max_pixels: int = DEFAULT_MAX_PIXELS, pin: bool = False,
              unchanged: Callable[[Prepared], bool] | None = None, share: bool = True) -> Prepared:
    """Stat and hash `item.path` (large files in a stream) and, for the passes `missing(content)` names,
    decode it and make their uint8 views. The one reader of files for every engine; errors are
    returned in `item.error` in the words a run reports, never raised. With `share`, a pass whose views
    another pass already has is listed in `item.aliases` instead (its writer stores the same embeddings)."""
    try:
        st = os.stat(item.path)
        item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
        if unchanged is not None and unchanged(item):
            return item  # not even read
        item.content, data = read_and_hash(item.path, item.size)
        needed = missing(item.content)
        if needed:  # else touched, renamed or a duplicate: embeddings exist
            _make_views(item, plans, needed, data, max_pixels, pin, share)
    except ImageError as e:
        item.error = reason_for(item.path, str(e))
    except OSError as e:
        item.error = f"cannot read it ({e.strerror or e})"
    except MemoryError:
        item.error = "not enough memory to decode it"
    return item


def _make_views(item: Prepared, plans: Sequence[Plan], needed: list[int], data: bytes | None, max_pixels: int,
                pin: bool, share: bool) -> None:
    decoded = decode_image(item.path, max_pixels=max_pixels, data=data)
    item.width, item.height = decoded.size
    item.notes = decoded.notes
    x = decoded.pixels
    made: dict[int, tuple] = {}  # pass index -> (CLIP identity, plan) of the views made for it
    for i in needed:
        plan_fn, clip_size, clip = plans[i]
        plan = plan_fn(int(x.shape[0]), int(x.shape[1]), item.content)
        same = next((j for j, key in made.items() if key == (clip, plan)), None)
        if same is not None and share:  # the same crops through the same CLIP: embedded once, stored for both
            item.aliases[i] = same
            continue
        made[i] = (clip, plan)
        views = render_views(to_bchw(x, None, item.path), plan, clip_size)
        views = views.mul_(255).round_().to(torch.uint8)  # exact: views are 8-bit already
        item.views[i] = views.pin_memory() if pin else views
