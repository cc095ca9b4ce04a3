"""Before loading a CLIP: is there anything to embed at all?

From the store and the files' stats alone (no file is read, no CLIP loaded): a
file needs no work when its path, size and mtime are as stored and its content
has embeddings for every (CLIP, crop policy) the job needs. An unchanged rerun
over a whole dataset then never loads (or even finds) the CLIP weights.
"""

from __future__ import annotations

import os
from typing import Sequence


def nothing_to_embed(store, passes: Sequence, paths: Sequence[str]) -> bool:
    """Whether every file in `paths` is unchanged and embedded for every pass (passes of stored encoders)."""
    known = []
    for p in passes:
        row = getattr(p.encoder, "row", None)
        if row is None:
            return False
        known.append(store.known_contents(row.id, p.key))
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return False  # let the embedding job report it
        row = store.file(path)
        if (row is None or row.status != "ok" or (row.size, row.mtime_ns) != (st.st_size, st.st_mtime_ns)
                or any(row.content not in k for k in known)):
            return False
    return True


__all__ = ["nothing_to_embed"]
