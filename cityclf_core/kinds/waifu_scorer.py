"""Eugeoter's waifu-scorer (v3, `model.pth`): an anime aesthetic rating 0..10.

Linear, ReLU, BatchNorm, Dropout blocks F->2048->512->256->128, then
Linear 128->32, ReLU, Linear 32->1, on the L2-normalised ViT-L/14 image
embedding; the output clamped to 0..10 as its own predictor does (label
"6.3/10"; score = rating / 10, see rating.py). State-dict keys under `layers.`
(0, 4, 8, 12, 16, 18 linears; 2, 6, 10, 14 BatchNorms with their running
statistics, which scoring needs: the network runs in eval mode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .rating import RatingKind

if TYPE_CHECKING:
    import torch
    from torch import nn

BLOCKS = ((2048, 0.3), (512, 0.3), (256, 0.2), (128, 0.1))


class WaifuScorerKind(RatingKind):
    name = "waifu-scorer"
    description = "waifu-scorer anime rating 0..10 (score = rating / 10)"
    layout_hint = "waifu-scorer: layers.0 ... 18, linears F->2048->512->256->128->32->1 with BatchNorms"
    width = 2048

    def net_layers(self, features: int) -> list[nn.Module]:
        from torch import nn  # only when a head is built: reading results needs no torch

        layers: list[nn.Module] = []
        for width, dropout in BLOCKS:
            layers += [nn.Linear(features, width), nn.ReLU(), nn.BatchNorm1d(width), nn.Dropout(dropout)]
            features = width
        return layers + [nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 1)]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.clamp(0.0, 10.0)

    def check_train_config(self, cfg, source):
        super().check_train_config(cfg, source)
        if cfg.batch < 2:
            raise ConfigError(f"{source}: train.batch must be at least 2 for a waifu-scorer head (its BatchNorm "
                              "layers learn batch statistics)")


__all__ = ["WaifuScorerKind"]
