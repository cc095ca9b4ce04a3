"""Validation as inference does it: per-view outputs of the head, reduced per image, scored by the head's kind."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..kinds import get_kind
from ..scoring.reduce import reduce_segments


@torch.no_grad()
def evaluate(net: nn.Module, cfg, views: torch.Tensor, counts: list[int], targets: torch.Tensor,
             combine: str = "mean") -> tuple[float, dict, np.ndarray]:
    """(validation loss, metrics, per-image predictions) of `net` on the validation views."""
    if not counts:
        return float("nan"), {"n_val": 0}, np.zeros(0)
    kind = cfg.kind
    net.eval()
    values = reduce_segments(kind.activate(net.logits(views)).float().cpu(), counts, combine)
    targets = targets.cpu()
    return kind.eval_loss(values, targets, cfg), kind.metrics(values, targets, cfg), kind.predictions(values)


def format_metrics(metrics: dict) -> str:
    """The validation summary printed after training, as the head's kind writes it."""
    return get_kind(metrics["arch"]).format_metrics(metrics)
