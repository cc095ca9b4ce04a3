r"""Popularity heads (Pixiv): a popularity score in [0, 1], its 1..100 value as the label; metadata as probabilities.

    popularity               (a) one output: sigmoid -> popularity score s
    popularity-multitask     (b) six outputs: s, then softmax over sanity (general, sensitive, explicit) and
                                 over AI (human, AI); trained with learned uncertainty weights
    popularity-attention     (c) (b) with the predicted metadata fed back through self-attention

The score (what gates, sorting and `--min` use) is s, the head's estimate of
the training target (see pixiv/targets.py); the label is 1 + 99 s rounded,
the document's 1..100 scale ("73/100"). The config sidecar carries the target
with its training-split scalers, the output names, the split and the CLIP.

Training (only through `cityclf pixiv train`): targets are [n, 3] rows
(s, sanity class 0..2, AI 0/1). The multi-task loss, with one learned
log-variance z_t per task (Kendall, Gal & Cipolla 2018):

    L = 1/2 exp(-z_pop) MSE(s_hat, s) + 1/2 z_pop
      + exp(-z_sanity) CE_sanity + 1/2 z_sanity
      + exp(-z_ai) CE_ai + 1/2 z_ai

The single-task loss is the MSE alone. Validation loss (early stopping, the
same for all three) is the popularity MSE.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..metrics import score_metrics
from ..scoring.results import HeadResult
from .base import HeadKind
from .popularity_nets import AI, NETS, OUTPUT_NAMES, SANITY
from .score import ScoreKind


def popularity_value(score: float) -> int:
    """The 1..100 value of a score s."""
    return int(round(1 + 99 * min(max(score, 0.0), 1.0)))


def _popularity_targets(targets: torch.Tensor) -> torch.Tensor:
    return targets[:, 0] if targets.ndim == 2 else targets


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
        return list(OUTPUT_NAMES[: self.outputs])

    def build_net(self, config) -> nn.Module:
        return NETS[self.name](config.features, config.hidden)

    def read_layout(self, state_dict: dict, source: str) -> tuple[int, int, int]:
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
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise WeightsError(f"{source}: tensor {k} holds NaN or infinite values; the file is damaged")
        return features, hidden, self.outputs

    # ------------------------------------------------------------ inference

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def label(self, result) -> str:
        return f"{popularity_value(result.positive)}/100"

    def value_of(self, result, label):
        if label in (None, "popularity", "score"):
            return result.positive
        return super().value_of(result, label)

    def jsonl_fields(self, result) -> dict:
        d = {"score": result.positive, "label": result.label}
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

    def from_stored(self, head, score, label, extra):
        extra = extra or {}
        return HeadResult(head, self, ["popularity", *extra], [score, *extra.values()], score, 0)

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

    def train_loss(self, net, logits, targets, cfg):
        return nn.functional.mse_loss(torch.sigmoid(logits[:, 0]), _popularity_targets(targets))

    def eval_loss(self, values, targets, cfg):
        return float(nn.functional.mse_loss(values[:, 0], _popularity_targets(targets)))

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
        return torch.cat([torch.sigmoid(logits[:, :1]), logits[:, SANITY].softmax(-1), logits[:, AI].softmax(-1)],
                         dim=1)

    def probs(self, result):
        return dict(zip(result.labels[1:], result.values[1:]))

    def summary(self, result):
        v = dict(zip(result.labels, result.values))
        sanity = max(("general", "sensitive", "explicit"), key=lambda s: v[f"sanity:{s}"])
        return (f"popularity {result.label} (score {result.positive:.2f}); {sanity}, "
                f"AI {v['ai:ai']:.2f}")

    def train_loss(self, net, logits, targets, cfg):
        z = net.log_vars
        mse = nn.functional.mse_loss(torch.sigmoid(logits[:, 0]), targets[:, 0])
        ce_sanity = nn.functional.cross_entropy(logits[:, SANITY], targets[:, 1].long())
        ce_ai = nn.functional.cross_entropy(logits[:, AI], targets[:, 2].long())
        return (0.5 * torch.exp(-z[0]) * mse + 0.5 * z[0] + torch.exp(-z[1]) * ce_sanity + 0.5 * z[1]
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


__all__ = ["PopularityAttentionKind", "PopularityKind", "PopularityMultiKind", "popularity_value"]
