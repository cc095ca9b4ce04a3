"""The CLIP a head was trained with, as its config sidecar records it.

A trained head's `<stem>.config.json` gets an additive key (the released
format tolerates keys it does not know; `HeadConfig.extra` keeps them)::

    "clip": {"source": "openai/clip-vit-large-patch14-336" or "/abs/folder",
             "identity": "<fingerprint of its weights>", "image_size": 336,
             "tiling": true, "tile_size": 672}

Loading uses it by default (the CLIP, and the crop policy), and running the
head on another CLIP is a warning that names both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .crops import CropPolicy

KEY = "clip"


@dataclass(frozen=True)
class ClipRecord:
    source: str
    identity: str | None = None
    image_size: int | None = None
    tiling: bool | None = None
    tile_size: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "ClipRecord | None":
        if not isinstance(data, dict) or not isinstance(data.get("source"), str):
            return None
        size = data.get("image_size")
        tile = data.get("tile_size")
        return cls(source=data["source"], identity=data.get("identity") or None,
                   image_size=int(size) if isinstance(size, int) else None,
                   tiling=bool(data["tiling"]) if isinstance(data.get("tiling"), bool) else None,
                   tile_size=int(tile) if isinstance(tile, int) else None)

    def policy_for(self, clip_size: int) -> CropPolicy | None:
        """The crop policy the head was trained with, when it runs on a CLIP of the recorded input size."""
        if self.tiling is None or (self.image_size is not None and clip_size != self.image_size):
            return None
        return CropPolicy(tiling=self.tiling, tile_size=self.tile_size if self.tiling else None)


def record_for(encoder, source: str, policy: CropPolicy) -> ClipRecord:
    """What to record for a head trained on `encoder` (loaded from `source`) with `policy` (resolved)."""
    resolved = policy.resolved(encoder.image_size)
    return ClipRecord(source=str(source), identity=getattr(encoder, "identity", None),
                      image_size=int(encoder.image_size), tiling=resolved.tiling,
                      tile_size=resolved.tile_size if resolved.tiling else None)


def recorded_clip(head) -> ClipRecord | None:
    """The CLIP recorded in a head's config sidecar, if any."""
    return ClipRecord.from_dict(head.config.extra.get(KEY))


def check_clip(head, encoder) -> None:
    """Warn when `head` runs on a CLIP other than the one it was trained with (compared by identity)."""
    from .notices import warn

    rec = recorded_clip(head)
    if rec is None or not rec.identity or getattr(encoder, "identity", None) in (None, rec.identity):
        return
    used = getattr(encoder, "source", None) or encoder.name
    warn(f"head {head.name} was trained with CLIP {rec.source} (identity {rec.identity}), but runs on "
         f"CLIP {used} (identity {encoder.identity}); its scores may mean nothing. Drop --clip to use the "
         "CLIP it was trained with.")


__all__ = ["ClipRecord", "check_clip", "record_for", "recorded_clip"]
