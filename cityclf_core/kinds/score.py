"""Score heads: one output, (tanh + 1) / 2, a score in [0, 1] (the aesthetic models)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, WeightsError
from ..metrics import score_metrics
from .base import HeadKind, ReviewItem, TrainingTargets

if TYPE_CHECKING:  # the tensors come from the caller; torch's losses are imported for training only
    import numpy as np
    import torch

SCORE_LOSSES = ("l1", "mse", "huber")


class ScoreKind(HeadKind):
    name = "score"
    description = "score 0..1"
    tiles_by_default = False
    metric_name = "mae"
    folder_value_name = "score"
    folder_hint = "0_reg, 1_chroma, or 0..10"

    def check_config(self, config) -> None:
        if config.outputs != 1:
            raise WeightsError(f"head {config.name!r}: a score head has 1 output, this one has {config.outputs}")

    def label_names(self, config) -> list[str]:
        return ["score"]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.tanh() + 1.0) / 2.0

    def label(self, result) -> str:
        return f"{int(result.positive * 100)}%"

    def value_of(self, result, label):
        return result.positive

    def csv_columns(self, name, labels):
        return [f"{name}:score"]

    def csv_cells(self, result):
        return [f"{result.positive:.6f}"]

    def short_text(self, result) -> str:
        return f"{result.positive:.3f}"

    def summary(self, result) -> str:
        return f"{result.positive:.3f} ({result.label})"

    # ------------------------------------------------------------ tags

    def tags(self, head, result, rules):
        if rules.bucket == "none":
            return []
        prefix = rules.tag_name(head, None)
        value = int(result.positive * 10) * 10 if rules.bucket == "decile" else int(result.positive * 100)
        return [f"{prefix}_{value}"] if prefix else []

    def tag_vocabulary(self, head, result, rules):
        import re

        prefix = rules.tag_name(head, None)
        return set(), [re.compile(rf"^{re.escape(prefix)}_\d{{1,3}}$")] if prefix else []

    # ------------------------------------------------------------ review

    def expected_value(self, target, head, source):
        return float(target)

    def review(self, path, result, expected, head):
        target = float(expected)
        return ReviewItem(path, f"{target:.3f}", f"{result.positive:.3f}", result.positive, target,
                          abs(result.positive - target), "off by")

    # ------------------------------------------------------------ training

    def finish_targets(self, values, where):
        lo, hi = min(values), max(values)
        if hi == lo:
            raise ConfigError(f"{where}: score folders all have the value {lo}; need at least two different scores")
        return TrainingTargets([(v - lo) / (hi - lo) for v in values], {"score_range": (lo, hi)})

    def check_train_config(self, cfg, source):
        if cfg.labels:
            raise ConfigError(f"{source}: a score model has no labels; remove 'labels' or use arch: class")
        if cfg.loss not in (None, *SCORE_LOSSES):
            raise ConfigError(f"{source}: train.loss for a score model is one of {', '.join(SCORE_LOSSES)}")

    def train_outputs(self, cfg) -> int:
        return 1

    def train_labels(self, cfg):
        return None

    def _loss_fn(self, cfg):
        import torch  # training only: scoring and reading results need no torch here

        return {"l1": torch.nn.L1Loss(), "mse": torch.nn.MSELoss(),
                "huber": torch.nn.HuberLoss(delta=0.1)}[cfg.loss or "l1"]

    def train_loss(self, net, logits, targets, cfg):
        return self._loss_fn(cfg)(self.activate(logits)[:, 0], targets)

    def eval_loss(self, values, targets, cfg):
        return float(self._loss_fn(cfg)(values[:, 0], targets))

    def metrics(self, values, targets, cfg):
        return score_metrics(values[:, 0].numpy(), targets.numpy())

    def predictions(self, values) -> np.ndarray:
        return values[:, 0].numpy()

    def format_metrics(self, metrics):
        return (f"validation: {metrics['n_val']} images, MAE {metrics['mae']:.4f}, RMSE {metrics['rmse']:.4f}, "
                f"Spearman {metrics['spearman']:.3f}, Pearson {metrics['pearson']:.3f}")
