"""What a scored image carries in its own file: one `cityclf` record, and the score key image browsers read.

    record      {"cityclf": 1, "heads": {NAME: {arch, score, label, probs?, sha256?, clip?}}, "aesthetic_score"?}
                -- every head's score, label and class probabilities, the head file's sha256 and the CLIP
                (name and weights fingerprint) where they are known; written as JSON, keys sorted and
                numbers rounded to 6 places, so the same scores always give the same bytes.
    aesthetic_score
                the first score head's score as text ("0.8730"): the PNG text key DiffusionToolkit reads
                (see docs/comfyui.md). Only a head of the `score` kind gives it: a classifier's number is
                the probability of an artifact, not an aesthetic score.

containers.py puts these into PNG, JPEG and WebP files without touching their image data.
"""

from __future__ import annotations

import json
import math
from typing import Mapping

RECORD_KEY = "cityclf"
AESTHETIC_KEY = "aesthetic_score"
VERSION = 1


def _number(x):
    if isinstance(x, float):
        return round(x, 6) if math.isfinite(x) else None
    return x


def head_entry(result, provenance: Mapping | None = None) -> dict:
    """One head's part of the record from a HeadResult (its kind's to_dict) and what is known of its files."""
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    entry = {"arch": d["arch"], "score": _number(d["score"]), "label": d["label"]}
    if d.get("probs") is not None:
        entry["probs"] = {k: _number(v) for k, v in d["probs"].items()}
    for key in ("sha256", "clip"):
        value = (provenance or {}).get(key, d.get(key))
        if value:
            entry[key] = value
    return entry


def build_record(results: Mapping, provenance: Mapping[str, Mapping] | None = None) -> dict:
    """The record for one image from {head: HeadResult or Predict's per-head dict}; provenance: {head: {sha256,
    clip}} (from `provenance_of(model)`), merged over what the dicts already carry."""
    heads = {name: head_entry(r, (provenance or {}).get(name)) for name, r in results.items()}
    record = {RECORD_KEY: VERSION, "heads": heads}
    score_heads = [h for h in heads.values() if h["arch"] == "score" and h["score"] is not None]
    if score_heads:
        record[AESTHETIC_KEY] = f"{score_heads[0]['score']:.4f}"
    return record


def merge_records(old: dict | None, new: dict) -> dict:
    """`new` over the record already in a file: heads scored now replace theirs, other heads' entries stay
    (as tags of other heads stay in a caption). A head's file hash and CLIP stay when the same result is written
    again by a command that does not know them (a query of stored scores)."""
    if not isinstance(old, dict) or not isinstance(old.get("heads"), dict):
        return new
    heads = dict(old["heads"])
    for name, entry in new["heads"].items():
        before = heads.get(name)
        if isinstance(before, dict) and before.get("score") == entry["score"]:  # the same result: keep what
            entry = {**{k: before[k] for k in ("sha256", "clip") if k in before}, **entry}  # is known of its files
        heads[name] = entry
    merged = {RECORD_KEY: VERSION, "heads": heads}
    score_heads = [h for _, h in sorted(heads.items()) if isinstance(h, dict) and h.get("arch") == "score"
                   and isinstance(h.get("score"), (int, float))]
    first_new = [h for h in new["heads"].values() if h["arch"] == "score" and h["score"] is not None]
    chosen = first_new[:1] or score_heads[:1]
    if chosen:
        merged[AESTHETIC_KEY] = f"{chosen[0]['score']:.4f}"
    return merged


def record_text(record: dict) -> str:
    """The record as the JSON text that is written (deterministic: the same record, the same bytes)."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def provenance_of(model) -> dict[str, dict]:
    """{head name: {"sha256": the head file's sha256, "clip": {"name", "identity"}}} for a ScoringModel."""
    from .loading.weights import file_sha256  # cached per file: a release was hashed when it was recognised

    out = {}
    for b in getattr(model, "bindings", ()):
        entry = {"clip": {"name": b.encoder.name, "identity": b.encoder.identity}}
        sha = b.head.sha256 or (file_sha256(b.head.path) if b.head.path is not None else None)
        if sha:
            entry["sha256"] = sha
        out[b.name] = entry
    return out


__all__ = ["AESTHETIC_KEY", "RECORD_KEY", "build_record", "head_entry", "merge_records", "provenance_of", "record_text"]
