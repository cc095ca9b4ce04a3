r"""Popularity heads (Pixiv): a popularity score in [0, 1], its percentile as the label; metadata as probabilities.

    popularity               (a) one output: sigmoid -> popularity score s
    popularity-multitask     (b) six outputs: s, then softmax over sanity (general, sensitive, explicit) and
                                 over AI (human, AI); trained with learned uncertainty weights
    popularity-attention     (c) (b) with the predicted metadata fed back through self-attention

The score (what gates, sorting and `--min` use) is s, the head's raw estimate
of the training target (see pixiv/targets.py). The label is the PERCENTILE of
s among the training works' scores ("73/100": above 73% of the training
works), from the quantiles saved in the config sidecar; every head also has a
`percentile` value. A head saved without quantiles shows 1 + 99 s rounded, as
before. The config sidecar carries the target with its training-split
scalers, the quantiles, the output names, the split (with the test works'
ids) and the CLIP.

Training (only through `cityclf pixiv train`): targets are [n, 3] rows
(s, sanity class 0..2, AI 0/1). The popularity loss L_pop is the MSE of
sigmoid(logit) against s (`train.loss: mse`) or, with `train.loss: pairwise`,
the pairwise logistic loss over every pair of the batch with different s:
mean log(1 + exp(-(l_i - l_j))) over pairs where s_i > s_j (a ranking loss).
The multi-task loss, with one learned log-variance z_t per task (Kendall, Gal
& Cipolla 2018):

    L = 1/2 exp(-z_pop) L_pop + 1/2 z_pop
      + exp(-z_sanity) CE_sanity + 1/2 z_sanity
      + exp(-z_ai) CE_ai + 1/2 z_ai

Each z_t minimises its term at z_pop = log L_pop and z_t = log(2 CE_t) for the
two classification tasks: the z_t are set to those values from the first
batch's losses, and they are trained with their own learning rate
(`train.uncertainty_lr`) and no weight decay, so they follow the task losses
as they fall. Since the task losses fall well below 1, the z_t become negative
and so does the total loss: that is expected, not a bug. The single-task loss
is L_pop alone. Validation loss (early stopping, the same for all three) is
the popularity MSE, or 1 - Spearman for the pairwise loss.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import ConfigError, WeightsError
from ..metrics import score_metrics, spearman
from ..scoring.results import HeadResult
from .base import HeadKind
from .popularity_outputs import AI, OUTPUT_NAMES, SANITY
from .score import ScoreKind

if TYPE_CHECKING:  # torch is imported where the networks (popularity_nets.py) are built, run or trained
    import numpy as np
    import torch
    from torch import nn

PERCENTILE = "percentile"
LOSSES = ("mse", "pairwise")
RUNNING = 0.95  # the running mean of the task losses: weight of the past


def popularity_value(score: float) -> int:
    """The 1..100 value of a score s (heads saved without training quantiles)."""
    return int(round(1 + 99 * min(max(score, 0.0), 1.0)))


def _popularity_targets(targets: torch.Tensor) -> torch.Tensor:
    return targets[:, 0] if targets.ndim == 2 else targets


def pairwise_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean log(1 + exp(-(l_i - l_j))) over the pairs of the batch with s_i > s_j (0 when all s are equal)."""
    from torch.nn.functional import softplus  # training only: reading results needs no torch

    diff = logits[:, None] - logits[None, :]
    better = targets[:, None] > targets[None, :]
    if not bool(better.any()):
        return logits.sum() * 0.0
    return softplus(-diff[better]).mean()


def popularity_loss(logit: torch.Tensor, target: torch.Tensor, cfg) -> torch.Tensor:
    from torch.nn.functional import mse_loss  # training only, as pairwise_loss

    if getattr(cfg, "loss", None) == "pairwise":
        return pairwise_loss(logit, target)
    return mse_loss(logit.sigmoid(), target)


class PopularityKind(HeadKind):
    name = "popularity"
    description = "Pixiv popularity 0..1 (1..100)"
    tiles_by_default = False
    trains_from_folders = False
    metric_name = "spearman"
    outputs = 1

    # ------------------------------------------------------------ files

    def check_config(self, config) -> None:
        if config.outputs != self.outputs:
            raise WeightsError(f"head {config.name!r}: a {self.name} head has {self.outputs} output(s), "
                               f"this one has {config.outputs}")

    def label_names(self, config) -> list[str]:
        return [*OUTPUT_NAMES[: self.outputs], PERCENTILE]

    def build_net(self, config) -> nn.Module:
        from .popularity_nets import NETS  # imports torch: only when a head is built

        net = NETS[self.name](config.features, config.hidden)
        net.set_quantiles((config.extra or {}).get("quantiles"))
        return net

    def read_layout(self, state_dict: dict, source: str) -> tuple[int, int, int]:
        from .popularity_nets import NETS  # a weights file is being read: torch is loaded already

        try:
            hidden, features = (int(n) for n in state_dict["trunk.0.weight"].shape)
        except (KeyError, ValueError, TypeError):
            raise WeightsError(f"{source} is not a {self.name} head: no 2-d tensor trunk.0.weight") from None
        expected = {k: tuple(v.shape) for k, v in NETS[self.name](features, hidden).state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state_dict.items()}
        if got != expected:
            missing = sorted(expected.keys() - got.keys())
            unexpected = sorted(got.keys() - expected.keys())
            wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
            raise WeightsError(f"{source} is not a {self.name} head (features {features}, hidden {hidden}): "
                               f"missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shapes {wrong[:4]}; "
                               "check the config sidecar's arch")
        for k, v in state_dict.items():
            if v.is_floating_point() and not bool(v.isfinite().all()):
                raise WeightsError(f"{source}: tensor {k} holds NaN or infinite values; the file is damaged")
        return features, hidden, self.outputs

    # ------------------------------------------------------------ inference

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        import torch  # a head is running: torch is loaded already (reading results needs none)

        return torch.cat([logits[:, :1].sigmoid(), logits[:, -1:]], dim=1)

    def percentile(self, result) -> float | None:
        if PERCENTILE not in result.labels:
            return None
        p = result.values[result.labels.index(PERCENTILE)]
        return p if math.isfinite(p) else None

    def label(self, result) -> str:
        p = self.percentile(result)
        return f"{popularity_value(result.positive)}/100" if p is None else f"{int(round(p))}/100"

    def value_of(self, result, label):
        if label in (None, "popularity", "score"):
            return result.positive
        return super().value_of(result, label)

    def jsonl_fields(self, result) -> dict:
        d = {"score": result.positive, "label": result.label}
        if self.percentile(result) is not None:
            d[PERCENTILE] = self.percentile(result)
        probs = self.probs(result)
        if probs is not None:
            d["probs"] = probs
        return d

    def csv_columns(self, name, labels):
        return [f"{name}:label", f"{name}:score"] + [f"{name}:{label}" for label in labels[1:]]

    def csv_cells(self, result):
        return [result.label, f"{result.positive:.6f}"] + [f"{v:.6f}" for v in result.values[1:]]

    def short_text(self, result) -> str:
        return result.label

    def summary(self, result) -> str:
        return f"popularity {result.label} (score {result.positive:.2f})"

    def to_stored(self, result):
        return result.positive, result.label, {**(self.probs(result) or {}),
                                               PERCENTILE: result.values[result.labels.index(PERCENTILE)]}

    def from_stored(self, head, score, label, extra):
        extra = dict(extra or {})
        pct = extra.pop(PERCENTILE, None)
        pct = float("nan") if pct is None else float(pct)
        return HeadResult(head, self, ["popularity", *extra, PERCENTILE], [score, *extra.values(), pct], score, 0)

    def tags(self, head, result, rules):
        return ScoreKind.tags(self, head, result, rules)

    def tag_vocabulary(self, head, result, rules):
        return ScoreKind.tag_vocabulary(self, head, result, rules)

    # ------------------------------------------------------------ training

    def folder_value(self, prefix: str):
        raise ValueError("popularity heads learn from Pixiv metadata, not folders")

    def check_train_config(self, cfg, source):
        if not getattr(cfg, "pixiv", False):
            raise ConfigError(f"{source}: {self.name} heads learn from Pixiv metadata; train them with "
                              "`cityclf pixiv train --config FILE.yaml`")
        if cfg.batch < 2:
            raise ConfigError(f"{source}: train.batch must be at least 2 (the input standardisation needs it)")

    def train_outputs(self, cfg) -> int:
        return self.outputs

    def train_labels(self, cfg):
        return None

    def param_groups(self, net, cfg) -> list[dict]:
        """The log-variances (if any) learn with their own rate and no weight decay."""
        special = [p for n, p in net.named_parameters() if n == "log_vars"]
        rest = [p for n, p in net.named_parameters() if n != "log_vars"]
        if not special:
            return [{"params": rest}]
        return [{"params": rest}, {"params": special, "lr": getattr(cfg, "uncertainty_lr", None) or cfg.lr,
                                   "weight_decay": 0.0}]

    def train_loss(self, net, logits, targets, cfg):
        return popularity_loss(logits[:, 0], _popularity_targets(targets), cfg)

    def eval_loss(self, values, targets, cfg):
        y = _popularity_targets(targets)
        if getattr(cfg, "loss", None) == "pairwise":
            return 1.0 - spearman(values[:, 0].numpy(), y.numpy()) if len(y) > 1 else float("nan")
        from torch.nn.functional import mse_loss  # training only: reading results needs no torch

        return float(mse_loss(values[:, 0], y))

    def metrics(self, values, targets, cfg):
        return score_metrics(values[:, 0].numpy(), _popularity_targets(targets).numpy())

    def predictions(self, values) -> np.ndarray:
        return values[:, 0].numpy()

    def format_metrics(self, metrics):
        text = (f"validation: {metrics['n_val']} works, Spearman {metrics['spearman']:.3f}, Pearson "
                f"{metrics['pearson']:.3f}, MAE {metrics['mae']:.4f}")
        extra = [f"{k.replace('_', ' ')} {metrics[k]:.3f}" for k in ("sanity_accuracy", "ai_accuracy")
                 if isinstance(metrics.get(k), float) and math.isfinite(metrics[k])]
        return text + (", " + ", ".join(extra) if extra else "")


class PopularityMultiKind(PopularityKind):
    name = "popularity-multitask"
    description = "Pixiv popularity 0..1 (1..100) + sanity level and AI probabilities"
    outputs = len(OUTPUT_NAMES)

    def activate(self, logits):
        import torch  # a head is running: torch is loaded already (reading results needs none)

        return torch.cat([logits[:, :1].sigmoid(), logits[:, SANITY].softmax(-1), logits[:, AI].softmax(-1),
                          logits[:, -1:]], dim=1)

    def probs(self, result):
        return {k: v for k, v in zip(result.labels[1:], result.values[1:]) if k != PERCENTILE}

    def summary(self, result):
        v = dict(zip(result.labels, result.values))
        sanity = max(("general", "sensitive", "explicit"), key=lambda s: v[f"sanity:{s}"])
        return (f"popularity {result.label} (score {result.positive:.2f}); {sanity}, "
                f"AI {v['ai:ai']:.2f}")

    def train_loss(self, net, logits, targets, cfg):
        import torch  # training only: reading results needs no torch

        z = net.log_vars
        pop = popularity_loss(logits[:, 0], targets[:, 0], cfg)
        ce_sanity = torch.nn.functional.cross_entropy(logits[:, SANITY], targets[:, 1].long())
        ce_ai = torch.nn.functional.cross_entropy(logits[:, AI], targets[:, 2].long())
        losses = [float(pop.detach()), float(ce_sanity.detach()), float(ce_ai.detach())]
        if net.training:
            if not net.log_vars_ready:  # start at each term's minimum for the first batch's losses
                with torch.no_grad():
                    z.copy_(torch.tensor(balance_points(losses), dtype=z.dtype, device=z.device))
                net.log_vars_ready = True
            net.task_losses = losses if net.task_losses is None else [
                RUNNING * old + (1 - RUNNING) * new for old, new in zip(net.task_losses, losses)]
        return (0.5 * torch.exp(-z[0]) * pop + 0.5 * z[0] + torch.exp(-z[1]) * ce_sanity + 0.5 * z[1]
                + torch.exp(-z[2]) * ce_ai + 0.5 * z[2])

    def metrics(self, values, targets, cfg):
        m = super().metrics(values, targets, cfg)
        if targets.ndim == 2:
            m["sanity_accuracy"] = float((values[:, SANITY].argmax(1) == targets[:, 1].long()).float().mean())
            m["ai_accuracy"] = float((values[:, AI].argmax(1) == targets[:, 2].long()).float().mean())
        return m


class PopularityAttentionKind(PopularityMultiKind):
    name = "popularity-attention"
    description = "Pixiv popularity 0..1 (1..100) + metadata, metadata fed back through self-attention"


def balance_points(task_losses) -> list[float]:
    """Where each uncertainty term is smallest: log L_pop, log(2 CE_sanity), log(2 CE_ai)."""
    pop, sanity, ai = (max(float(v), 1e-8) for v in task_losses)
    return [math.log(pop), math.log(2 * sanity), math.log(2 * ai)]


__all__ = ["LOSSES", "PERCENTILE", "PopularityAttentionKind", "PopularityKind", "PopularityMultiKind", "balance_points",
           "pairwise_loss", "popularity_loss", "popularity_value"]
