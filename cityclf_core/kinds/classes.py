"""Classifier heads: N >= 2 outputs, softmax; class 0 is "Pass" and the score is P(not class 0)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from ..errors import ConfigError, WeightsError
from ..metrics import class_metrics
from ..scoring.results import HeadResult
from .base import HeadKind, ReviewItem, TrainingTargets

if TYPE_CHECKING:  # the tensors come from the caller; torch's losses are imported for training only
    import torch


class ClassKind(HeadKind):
    name = "class"
    description = "classifier"
    tiles_by_default = True
    metric_name = "accuracy"
    folder_value_name = "class number"
    folder_hint = "0_reg, 1_chroma"

    def check_config(self, config) -> None:
        if config.outputs < 2:
            raise WeightsError(f"head {config.name!r}: a class head needs at least 2 outputs, not {config.outputs}")

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)

    def positive(self, values: torch.Tensor) -> torch.Tensor:
        return 1.0 - values[:, :1]

    def label(self, result) -> str:
        return result.labels[max(range(len(result.values)), key=result.values.__getitem__)]

    def probs(self, result):
        return dict(zip(result.labels, result.values))

    def summary(self, result) -> str:
        return f"{result.label} (not-pass {result.positive:.2f})"

    def from_stored(self, head, score, label, extra):
        extra = extra or {label: 1.0}
        return HeadResult(head, self, list(extra), list(extra.values()), score, 0)

    # ------------------------------------------------------------ tags

    def tags(self, head, result, rules):
        limit = rules.threshold(head)
        tags = []
        for label, p in zip(result.labels[1:], result.values[1:]):  # class 0 is Pass
            name = rules.tag_name(head, label)
            if name and p >= limit and name not in tags:
                tags.append(name)
        return tags

    def tag_vocabulary(self, head, result, rules):
        return {rules.tag_name(head, label) for label in result.labels[1:]}, []

    # ------------------------------------------------------------ review

    def expected_value(self, target, head, source):
        labels = head.labels
        if int(target) >= len(labels):
            raise ConfigError(f"{source} has class folder {int(target)}, but head {head.name} has only "
                              f"{len(labels)} classes")
        return labels[int(target)]

    def review(self, path, result, expected, head):
        name = class_name(head, str(expected))
        p = result.value_of(name)
        if result.label == name:
            return None
        pass_name = head.labels[0]
        kind = ("false positive" if name == pass_name else
                "false negative" if result.label == pass_name else "confused")
        return ReviewItem(path, name, result.label, max(result.values), p, -math.log(max(p, 1e-7)), kind)

    # ------------------------------------------------------------ training

    def folder_value(self, prefix: str):
        return int(prefix)

    def finish_targets(self, values, where):
        classes = sorted({int(v) for v in values})
        if classes != list(range(len(classes))):
            raise ConfigError(f"{where}: classes must be 0..K-1 without gaps; found {classes}")
        return TrainingTargets(list(values), {"classes": classes})

    def check_train_config(self, cfg, source):
        if cfg.loss not in (None, "ce", "cross_entropy"):
            raise ConfigError(f"{source}: a class model trains with weighted cross-entropy; remove train.loss")
        if cfg.labels and sorted(cfg.labels) != list(range(len(cfg.labels))):
            raise ConfigError(f"{source}: labels must be 0..K-1 without gaps, got {sorted(cfg.labels)}")
        if cfg.labels and len(cfg.labels) < 2:
            raise ConfigError(f"{source}: a class model needs at least 2 labels")
        if any(w < 0 for _, w in cfg.labels.values()):
            raise ConfigError(f"{source}: label loss weights must not be negative")

    def complete_train_config(self, cfg, targets):
        present = {int(t) for t in targets.tolist()}
        if not cfg.labels:
            cfg = dataclasses.replace(cfg, labels={i: (str(i), 1.0) for i in range(max(present) + 1)})
        if max(present) >= len(cfg.labels):
            raise ConfigError(f"the data has class {max(present)}, but the config's labels stop at "
                              f"{len(cfg.labels) - 1}; add it to 'labels'")
        return cfg

    @staticmethod
    def class_weights(cfg) -> torch.Tensor:
        import torch  # training only: scoring and reading results need no torch here

        return torch.tensor([cfg.labels[i][1] for i in range(len(cfg.labels))], dtype=torch.float32)

    def train_loss(self, net, logits, targets, cfg):
        from torch.nn.functional import cross_entropy  # training only, as class_weights

        # cross-entropy on LOGITS (the reference applied it to softmax outputs)
        weights = self.class_weights(cfg).to(logits.device)
        return cross_entropy(logits, targets.long(), weight=weights)

    def eval_loss(self, values, targets, cfg):
        probs = values.clamp_min(1e-7)
        weights = self.class_weights(cfg)
        tgt = targets.long()
        nll = -probs.log().gather(1, tgt[:, None])[:, 0]
        w = weights[tgt]
        return float((nll * w).sum() / w.sum())

    def metrics(self, values, targets, cfg):
        labels = [cfg.labels[i][0] for i in range(len(cfg.labels))]
        return class_metrics(values.argmax(dim=1).numpy(), targets.long().numpy(), labels)

    def format_metrics(self, metrics):
        labels = metrics["labels"]
        lines = [f"validation: {metrics['n_val']} images, accuracy {metrics['accuracy']:.3f} "
                 f"(chance {metrics['chance_accuracy']:.3f}), F1 macro {metrics['f1_macro']:.3f}"]
        for name in labels:
            key = name.lower().replace(" ", "_")
            lines.append(f"  {name:>24}: precision {metrics['precision_' + key]:.3f}  recall "
                         f"{metrics['recall_' + key]:.3f}  F1 {metrics['f1_' + key]:.3f}")
        width = max(len(x) for x in labels)
        lines.append("  confusion matrix (rows: true, columns: predicted)")
        lines.append("  " + " " * (width + 2) + " ".join(f"{x[:8]:>8}" for x in labels))
        for name, row in zip(labels, metrics["confusion_matrix"]):
            lines.append(f"  {name:>{width}}  " + " ".join(f"{v:>8}" for v in row))
        return "\n".join(lines)


def class_name(head, text: str) -> str:
    """A class of `head` from its name, number or name in any case."""
    if text in head.labels:
        return text
    if text.isdigit() and int(text) < len(head.labels):
        return head.labels[int(text)]
    lowered = {label.lower(): label for label in head.labels}
    if text.lower() in lowered:
        return lowered[text.lower()]
    raise ConfigError(f"head {head.name} has no class {text!r}; its classes are {', '.join(head.labels)}")
