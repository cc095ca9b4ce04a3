"""The learning-rate schedule: cosine (optionally after a linear warm-up), or warm-up then constant."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import TrainConfig


def make_scheduler(opt, cfg: TrainConfig):
    total = cfg.optimizer_steps
    warm = cfg.warmup if cfg.warmup is not None else (0 if cfg.cosine else 5000)
    warm_steps = min(total - 1, max(0, warm // cfg.batch))
    sched = torch.optim.lr_scheduler
    if cfg.cosine:
        cosine = sched.CosineAnnealingLR(opt, T_max=max(1, total - warm_steps))
        if warm_steps:
            return sched.SequentialLR(opt, [sched.LinearLR(opt, 0.1, 1.0, total_iters=warm_steps), cosine],
                                      milestones=[warm_steps])
        return cosine
    return sched.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=max(1, warm_steps))
