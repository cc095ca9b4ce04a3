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
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..crops import render_views
from ..embedding import ClipPass, to_bchw
from ..errors import ImageError
from ..images import DEFAULT_MAX_PIXELS, decode_image, reason_for


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
        item = Prepared(index, path)
        try:
            st = os.stat(path)
            item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
            prior = self._stored(path)
            if (prior is not None and prior.status == "ok" and (prior.size, prior.mtime_ns) == (item.size, item.mtime_ns)
                    and not self.known.missing(prior.content)):
                item.content, item.unchanged = prior.content, True  # not even read
                return item
            with open(path, "rb") as f:
                data = f.read()
            item.content = hashlib.sha256(data).hexdigest()
            needed = self.known.missing(item.content)
            if not needed:
                return item  # touched, renamed or a duplicate: embeddings exist
            self._make_views(item, needed, data)
        except ImageError as e:
            item.error = reason_for(path, str(e))
        except OSError as e:
            item.error = f"cannot read it ({e.strerror or e})"
        except MemoryError:
            item.error = "not enough memory to decode it"
        return item

    def _make_views(self, item: Prepared, needed: list[int], data: bytes) -> None:
        decoded = decode_image(item.path, max_pixels=self.max_pixels, data=data)
        item.width, item.height = decoded.size
        item.notes = decoded.notes
        x = decoded.pixels
        made: dict[int, tuple] = {}  # pass index -> (encoder, plan) of the views made for it
        for i in needed:
            clip_pass = self.passes[i]
            plan = clip_pass.plan(int(x.shape[0]), int(x.shape[1]), item.content)
            same = next((j for j, (enc, p) in made.items() if enc is clip_pass.encoder and p == plan), None)
            if same is not None:  # e.g. a small image: its "tiles" are its whole view; embed it once
                item.aliases[i] = same
                continue
            made[i] = (clip_pass.encoder, plan)
            views = render_views(to_bchw(x, None, item.path), plan, clip_pass.encoder.image_size)
            views = views.mul_(255).round_().to(torch.uint8)  # exact: views are 8-bit already
            item.views[i] = views.pin_memory() if self.pin else views

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers.clear()
