"""LAION's improved aesthetic predictor ("aesthetic predictor v2", `sac+logos+ava1-l14-linearMSE.pth`).

Five linears with no activation between them (dropout only in training), on the
L2-normalised ViT-L/14 image embedding; the output is a rating on the AVA
photo-contest scale, roughly 1..10 (label "6.3/10"; score = rating / 10, see
rating.py). State-dict keys `layers.{0,2,4,6,7}.{weight,bias}`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .rating import RatingKind

if TYPE_CHECKING:
    from torch import nn


class LaionAestheticKind(RatingKind):
    name = "laion-aesthetic"
    description = "LAION aesthetic rating 1..10 (score = rating / 10)"
    layout_hint = "LAION aesthetic: layers.0, 2, 4, 6, 7 linears F->1024->128->64->16->1"
    width = 1024

    def net_layers(self, features: int) -> list[nn.Module]:
        from torch import nn  # only when a head is built: reading results needs no torch

        return [nn.Linear(features, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1)]


__all__ = ["LaionAestheticKind"]
