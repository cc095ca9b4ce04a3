"""What to load and from where: heads, and the CLIP they run on.

    catalogue.py     the released heads (by checksum), their CLIP pairings, finding and downloading heads
    head_files.py    a head file and its config sidecar, read and written
    weights.py       safetensors (and weights-only .bin) reading with clear errors
    clips.py         the one CLIP resolver: auto/hub id/folder/name/recorded CLIP -> an encoder, one cache
    clip_records.py  the CLIP a trained head records, portable across machines
    clip_folder.py   what a transformers CLIP folder must hold
    fingerprints.py  a CLIP's identity: one fingerprint of its weights
    hub.py           the Hugging Face hub: hub ids, offline rule, downloads, .bin conversion
    models.py        a ScoringModel from head names and a CLIP
"""

from .clips import (
    TransformersClipEncoder,
    clip_identity,
    clip_source_for,
    load_encoder,
    locate_clip,
    source_name,
)
from .models import load_scoring_model

__all__ = ["TransformersClipEncoder", "clip_identity", "clip_source_for", "load_encoder", "load_scoring_model",
           "locate_clip", "source_name"]
