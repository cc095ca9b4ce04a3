"""What to load and from where: heads, and the CLIP they run on.

    catalogue.py     the released heads (by checksum), their CLIP pairings, finding and downloading heads
    head_config.py   what a head's config sidecar says (HeadConfig)
    head_files.py    a head file and its config sidecar, read and written
    weights.py       safetensors (and weights-only .bin) reading with clear errors
    clips.py         the one CLIP resolver: auto/hub id/folder/name/recorded CLIP -> an encoder, one cache
    clip_records.py  the CLIP a trained head records, portable across machines
    clip_folder.py   what a transformers CLIP folder must hold
    fingerprints.py  a CLIP's identity: one fingerprint of its weights
    hub.py           the Hugging Face hub: hub ids, offline rule, downloads, .bin conversion
    models.py        a ScoringModel from head names and a CLIP
"""

from __future__ import annotations

from ..lazy import lazy_exports

#: where each name lives; imported on first use, so that the catalogue (`cityclf models`) loads no torch or CLIP code
_EXPORTS = {
    "TransformersClipEncoder": "clips",
    "clip_identity": "clips",
    "clip_source_for": "clips",
    "load_encoder": "clips",
    "locate_clip": "clips",
    "source_name": "clips",
    "load_scoring_model": "models",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
