"""The CLIP a head was trained with, as its config sidecar records it.

A trained head's `<stem>.config.json` gets an additive key (the released
format tolerates keys it does not know; `HeadConfig.extra` keeps them)::

    "clip": {"source": "openai/clip-vit-large-patch14-336" or "/where/it/was/my-clip",
             "folder": null or "my-clip",
             "identity": "<fingerprint of its weights>", "image_size": 336,
             "tiling": true, "tile_size": 672}

A hub id is recorded as itself. A folder is recorded by its name (`folder`) and
its weights' fingerprint, so the head works when it and its CLIP are copied
elsewhere: loading looks where it was trained (`source`), then for a folder of
that name in the CLIP folders, and accepts one only when the fingerprint matches
(see clips.find_recorded_clip). Heads written by earlier versions record a
folder's path in `source` (no `folder`); they still load.

Loading uses the record by default (the CLIP, and the crop policy), and running
the head on another CLIP is a warning that names both.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..notices import warn
from ..scoring.crops import CropPolicy
from .hub import is_hub_id

KEY = "clip"


@dataclass(frozen=True)
class ClipRecord:
    source: str
    identity: str | None = None
    image_size: int | None = None
    tiling: bool | None = None
    tile_size: int | None = None
    folder: str | None = None  # a folder CLIP's name (found by it, checked by `identity`); None: a hub id or an old path

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "ClipRecord | None":
        if not isinstance(data, dict) or not isinstance(data.get("source"), str):
            return None
        size = data.get("image_size")
        tile = data.get("tile_size")
        folder = data.get("folder")
        return cls(source=data["source"], identity=data.get("identity") or None,
                   image_size=int(size) if isinstance(size, int) else None,
                   tiling=bool(data["tiling"]) if isinstance(data.get("tiling"), bool) else None,
                   tile_size=int(tile) if isinstance(tile, int) else None,
                   folder=folder if isinstance(folder, str) and folder else None)

    def policy_for(self, clip_size: int) -> CropPolicy | None:
        """The crop policy the head was trained with, when it runs on a CLIP of the recorded input size."""
        if self.tiling is None or (self.image_size is not None and clip_size != self.image_size):
            return None
        return CropPolicy(tiling=self.tiling, tile_size=self.tile_size if self.tiling else None)


def record_for(encoder, source: str | os.PathLike, policy: CropPolicy) -> ClipRecord:
    """What to record for a head trained on `encoder` (loaded from `source`: a hub id or a folder) with `policy`.

    A folder is recorded by its name and the encoder's identity (its weights' fingerprint); its path on this
    machine is kept only as the first place to look.
    """
    resolved = policy.resolved(encoder.image_size)
    identity = getattr(encoder, "identity", None)
    hub_id = is_hub_id(str(source))
    path = str(source) if hub_id else str(Path(source).expanduser().resolve())
    return ClipRecord(source=path, identity=identity, image_size=int(encoder.image_size),
                      tiling=resolved.tiling, tile_size=resolved.tile_size if resolved.tiling else None,
                      folder=None if hub_id else Path(path).name)


def recorded_clip(head_or_config) -> ClipRecord | None:
    """The CLIP recorded in a head's config sidecar (given the head or its config), if any."""
    config = getattr(head_or_config, "config", head_or_config)
    return ClipRecord.from_dict(config.extra.get(KEY))


def check_clip(head, encoder) -> None:
    """Warn when `head` runs on a CLIP other than the one it was trained with (compared by identity)."""
    from .fingerprints import former_identity

    rec = recorded_clip(head)
    identity = getattr(encoder, "identity", None)
    if rec is None or not rec.identity or identity in (None, rec.identity):
        return
    if former_identity(identity) == rec.identity:
        return  # the same CLIP: a head trained by an earlier version records the identity it gave then
    used = getattr(encoder, "source", None) or encoder.name
    warn(f"head {head.name} was trained with CLIP {rec.source} (identity {rec.identity}), but runs on "
         f"CLIP {used} (identity {encoder.identity}); its scores may mean nothing. Drop --clip to use the "
         "CLIP it was trained with.")


__all__ = ["ClipRecord", "check_clip", "record_for", "recorded_clip"]
