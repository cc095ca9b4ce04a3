"""Whole SQLite stores: their statistics, exporting embeddings to NumPy, merging stores into one."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from ..rows import EncoderRow
from .sql import guarded


class WholeStore:
    """What reads or writes every table at once."""

    @guarded
    def stats(self) -> dict:
        q = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "files": q("SELECT COUNT(*) FROM files WHERE status = 'ok'"),
            "failed": q("SELECT COUNT(*) FROM files WHERE status = 'failed'"),
            "embeddings": q("SELECT COUNT(*) FROM embeddings"),
            "scores": q("SELECT COUNT(*) FROM scores"),
            "encoders": [e.__dict__ for e in self.encoders()],
            "policies": [{"clip": p.encoder.source, "clip_name": p.encoder.name, "policy": p.policy,
                          "embedded": p.count} for p in self.policies()],
            "heads": self.score_heads(),
        }


    @guarded
    def export_sets(self, out, sets: list[tuple[EncoderRow, str]]) -> list[int]:
        """Write an .npz (`out`: a path, to which numpy adds .npz, or an open binary file) of one or more
        (CLIP, policy) sets of embeddings; the number of images of each.

        One set: arrays paths [N], offsets [N+1], embeddings [total views, D] (float32), clip_identity,
        clip_source, policy. Several: `sets` lists their names, and each set's arrays are named
        `NAME.paths`, `NAME.offsets`, ... (NAME: the policy, prefixed by the CLIP's name when there are
        several CLIPs).
        """
        paths = [f.path for f in self.files()]
        arrays: dict[str, np.ndarray] = {}
        counts_out, names = [], []
        several_clips = len({e.id for e, _ in sets}) > 1
        for encoder, policy in sets:
            found, counts, stacked, _ = self.read_embeddings(paths, encoder, policy)
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            name = set_name(encoder, policy, several_clips)
            prefix = "" if len(sets) == 1 else name + "."
            arrays.update({f"{prefix}paths": np.array(found, dtype=str), f"{prefix}offsets": offsets,
                           f"{prefix}embeddings": stacked, f"{prefix}clip_identity": np.array(encoder.identity),
                           f"{prefix}clip_source": np.array(encoder.source), f"{prefix}policy": np.array(policy)})
            counts_out.append(len(found))
            names.append(name)
        if len(sets) > 1:
            arrays["sets"] = np.array(names, dtype=str)
        np.savez(out, **arrays)
        return counts_out


    @guarded
    def merge_from(self, sources: Iterable[str | os.PathLike]) -> dict[str, int]:
        """Copy every encoder, embedding, file and score of the stores `sources` into this one (existing rows win)."""
        added = {"embeddings": 0, "files": 0, "scores": 0}
        for src in sources:
            with type(self)(src, create=False, readonly=True) as other:
                ids = {e.id: self.register_encoder(e.identity, e.name, e.source, e.image_size, e.embed_dim).id
                       for e in other.encoders()}
                with self.transaction():
                    before = {t: self._count(t) for t in added}
                    for content, enc_id, policy, views, data in other.db.execute(
                            "SELECT content, encoder_id, policy, views, data FROM embeddings"):
                        self.db.execute("INSERT OR IGNORE INTO embeddings (content, encoder_id, policy, views, data) "
                                        "VALUES (?,?,?,?,?)", (content, ids[enc_id], policy, views, data))
                    file_cols = "path, size, mtime_ns, content, width, height, status, error, notes, updated"
                    self.db.executemany(f"INSERT OR IGNORE INTO files ({file_cols}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                        other.db.execute(f"SELECT {file_cols} FROM files"))
                    kind = "kind" if "kind" in other._score_columns else "NULL"
                    self.db.executemany(
                        "INSERT OR IGNORE INTO scores (path, head, combine, score, label, probs, updated, kind) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        other.db.execute(f"SELECT path, head, combine, score, label, probs, updated, {kind} "
                                         "FROM scores"))
                    for t in added:
                        added[t] += self._count(t) - before[t]
        return added


def set_name(encoder: EncoderRow, policy: str, with_clip: bool) -> str:
    """A name for one (CLIP, policy) set of embeddings in an export: 'whole', 'tiles-672-1536-up', with the CLIP."""
    safe = policy.replace(":", "-")
    return f"{encoder.name}.{safe}" if with_clip else safe


__all__ = ["WholeStore", "set_name"]
