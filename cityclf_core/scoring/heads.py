"""`Head`: a loaded head -- its network, its kind (what its outputs mean), where it came from.

A head's network (the released layout lives with its kind in kinds/released.py;
a kind may build another) turns [n, F] CLIP image embeddings into [n, N]
logits; the head's kind turns those into values (a score in [0, 1], class
probabilities ...). The head carries its kind as an object, so nothing here
looks kinds up. Heads always run in float32, whatever the CLIP's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from .crops import CropPolicy

PREDICT_ROWS = 4096  # embeddings per head forward


@dataclass
class Head:
    """A loaded head: the network, what it predicts, and where it came from.

    `config` is the head file's config (loading.head_files.HeadConfig: name,
    revision, labels, sizes). `kind` is what the outputs mean (a kinds.HeadKind;
    default: the config's). `release` is set when the file is one of the
    catalogue's known releases (recognised by checksum); it supplies the CLIP
    pairing and tile policy. `clip_record` is the CLIP the head was trained with,
    as its config records it (loading.clip_records.ClipRecord), or None.
    """

    net: nn.Module  # the released layout for the score and class kinds; a kind may build its own
    config: Any
    path: Path | None = None
    sha256: str | None = None
    release: Any = None
    display: str | None = None
    kind: Any = None
    clip_record: Any = None

    def __post_init__(self):
        if self.kind is None:
            self.kind = self.config.kind

    @property
    def name(self) -> str:
        if self.display:
            return self.display
        if self.release is not None:
            return self.release.name
        if self.config.rev or self.path is None:
            return self.config.display_name
        return self.path.stem

    @property
    def arch(self) -> str:
        return self.kind.name

    @property
    def labels(self) -> list[str]:
        """One name per output, as the head's kind names them."""
        return self.kind.label_names(self.config)

    @property
    def features(self) -> int:
        return self.config.features

    @torch.inference_mode()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[n, F] embeddings (any dtype/device) -> [n, N] float32 scores or probabilities on the CPU."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.features:
            raise WeightsError(
                f"head {self.name} takes {self.features}-d CLIP embeddings, "
                f"got shape {tuple(embeddings.shape)}"
            )
        param = next(self.net.parameters())
        x = embeddings.to(device=param.device, dtype=torch.float32)
        kind = self.kind
        if x.shape[0] <= PREDICT_ROWS:
            return kind.activate(self.net.logits(x)).float().cpu()
        # in blocks: the activations of a block stay in cache (measurably faster on CPUs)
        return torch.cat([kind.activate(self.net.logits(block)).float().cpu() for block in x.split(PREDICT_ROWS)])

    def to(self, device) -> "Head":
        self.net.to(device)
        return self


def default_policy(head: Head, clip_size: int, pairing: str = "best") -> CropPolicy:
    """The crop policy for `head` run on a CLIP of input size `clip_size`.

    A release run on its paired CLIP gets the pairing's policy (e.g. 512 px tiles
    for chromatic aberration on ViT-L/14); on any other CLIP, tiles are 2*S.
    A head whose config records the CLIP it was trained with, on a CLIP of that
    input size: the recorded policy. Other heads: as their kind says (score heads the whole image,
    classifiers five tiles).
    """
    release = head.release
    if release is not None:
        for p in (release.pairing_for(pairing), release.pairing, release.alternative):
            if p is not None and p.clip.image_size == clip_size:
                return p.policy
        return CropPolicy(tiling=release.pairing.policy.tiling)
    trained = head.clip_record.policy_for(clip_size) if head.clip_record is not None else None
    return trained or CropPolicy(tiling=head.kind.tiles_by_default)


__all__ = ["PREDICT_ROWS", "Head", "default_policy"]
