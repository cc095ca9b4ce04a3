"""What needs embedding, decided before any CLIP is loaded or any file read.

From the store and the files' stats alone: a file needs no work when its path,
size and mtime are as stored and its content has embeddings for every (CLIP,
crop policy) the job needs. An unchanged rerun over a whole dataset then never
loads (or even finds) the CLIP weights. Both engines ask here: the local one
whether to load a CLIP at all (dataset/passes.py), the Ray one which files to
send to its workers.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence


def files_to_embed(store, known: Sequence[set[str]], paths: Sequence[str]
                   ) -> Iterator[tuple[str, int | None, int | None, bool]]:
    """Per path, in order: (path, size, mtime_ns, needs embedding). `known[i]` holds the contents that have
    embeddings of pass i; a file that cannot be stat'ed has size and mtime None and needs embedding (the
    embedding job reports why)."""
    for path in paths:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            yield path, None, None, True
            continue
        row = store.file(path)
        done = (row is not None and row.status == "ok" and (row.size, row.mtime_ns) == (size, mtime)
                and all(row.content in k for k in known))
        yield path, size, mtime, not done


def nothing_to_embed(store, passes: Sequence, paths: Sequence[str]) -> bool:
    """Whether every file in `paths` is unchanged and embedded for every pass (passes of stored encoders)."""
    known = []
    for p in passes:
        row = getattr(p.encoder, "row", None)
        if row is None:
            return False
        known.append(store.known_contents(row.id, p.key))
    return not any(needed for *_, needed in files_to_embed(store, known, paths))


__all__ = ["files_to_embed", "nothing_to_embed"]
