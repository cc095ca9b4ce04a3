"""`HeadKind`: the one place that knows what a kind of head's outputs mean.

The defaults describe the released CityClassifiers file layout (16 tensors,
see released.py); a kind with another network overrides `build_net` and
`read_layout`. Results are `HeadResult`s (scoring/results.py): per image, the outputs
reduced over the views (`values`) and the head's single number (`positive`,
what selections, gates and sorting use).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..scoring.results import HeadResult
from .registry import get_kind

if TYPE_CHECKING:  # torch is imported where a network is built, run or trained: reading results needs none
    import numpy as np
    import torch
    from torch import nn


@dataclass
class TrainingTargets:
    """Targets read from category folders: one row per example, plus facts to record with the head."""

    values: list  # per example: a number, or a list of numbers for multi-output kinds
    facts: dict


@dataclass
class ReviewItem:
    """An image a head gets wrong, for the refinement loop (see review.py)."""

    path: str
    expected: str
    predicted: str
    confidence: float  # probability of the predicted class (or the predicted score)
    p_expected: float  # probability of the expected class (or the expected score)
    loss: float  # -log p(expected) for classes, |score - expected| for scores
    kind: str  # false positive / false negative / confused / off by

    def to_dict(self) -> dict:
        return asdict(self)


class HeadKind:
    """Base class of head kinds. Subclasses set `name` and override what differs."""

    name: str = ""
    #: what `cityclf models` and node tooltips say the head gives
    description: str = ""
    #: crop policy when nothing else says: five tiles (artifact classifiers) or the whole image
    tiles_by_default: bool = False
    #: trained by `cityclf train` from category folders (False: by a command of its own, e.g. `cityclf pixiv train`)
    trains_from_folders: bool = True
    #: the validation metric training reports beside the loss, and whether larger is better
    metric_name: str = "loss"
    #: the CLIP (hub id) heads of this kind are made for, when neither the file nor the catalogue names one
    clip: str | None = None
    #: how the kind's state-dict layout looks, for the message about a file of no known layout
    layout_hint: str = ""

    def __reduce__(self):
        """Pickled by name (results sent between processes): unpickles to the registered kind."""
        return get_kind, (self.name,)

    # ------------------------------------------------------------ files

    def check_config(self, config) -> None:
        """Raise WeightsError when `config` (a HeadConfig) cannot be a head of this kind."""

    def label_names(self, config) -> list[str]:
        """One name per output: the config's labels[str(i)], else str(i) (as the reference)."""
        labels = config.labels or {}
        return [str(labels.get(str(i), str(i))) for i in range(config.outputs)]

    def build_net(self, config) -> nn.Module:
        """An untrained network for `config`; it must have `logits(x)` ([n, F] -> [n, outputs])."""
        from .released import HeadNet  # the network's module imports torch: only when a head is built

        return HeadNet(config.features, config.hidden, config.outputs)

    def read_layout(self, state_dict: dict, source: str) -> tuple[int, int, int]:
        """Check a state dict's layout; (features, hidden, outputs) read from its shapes."""
        from .released import validate_state_dict  # beside the network, which imports torch

        return validate_state_dict(state_dict, source)

    def recognises(self, state_dict: dict) -> bool:
        """Whether a file with no config is a head of this kind, by its keys alone (read_layout checks the rest).

        The released layout is no kind's own (score and class heads share it): False."""
        return False

    # ------------------------------------------------------------ inference

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """[n, outputs] logits -> [n, outputs] values for one view."""
        raise NotImplementedError

    def positive(self, values: torch.Tensor) -> torch.Tensor:
        """[n, outputs] values -> [n, 1]: the head's one number per view (reduced over views like the rest)."""
        return values[:, :1]

    def label(self, result) -> str:
        raise NotImplementedError

    def probs(self, result) -> dict[str, float] | None:
        """Class probabilities to show and store, or None."""
        return None

    def value_of(self, result, label: str | None) -> float:
        """The number a selection (`HEAD:LABEL=0.5`) compares: an output by name or index; None: the score."""
        if label is None:
            return result.positive
        if label in result.labels:
            return result.values[result.labels.index(label)]
        if label.isdigit() and int(label) < len(result.values):
            return result.values[int(label)]
        raise ConfigError(f"head {result.head} has no class {label!r}; its classes are {', '.join(result.labels)}")

    # ------------------------------------------------------------ writing results

    def to_dict(self, result) -> dict:
        """The JSON a node shows for one head and image."""
        d = {"arch": self.name, "score": result.positive, "label": result.label, "views": result.views}
        probs = self.probs(result)
        if probs is not None:
            d["probs"] = probs
        return d

    def jsonl_fields(self, result) -> dict:
        """The fields of `cityclf score --format jsonl` after path and model: always the score (what --min,
        --top and the CSV's score column use), and a classifier's label and probabilities."""
        probs = self.probs(result)
        if probs is None:
            return {"score": result.positive}
        return {"score": result.positive, "probs": probs, "label": result.label}

    def csv_columns(self, name: str, labels: list[str]) -> list[str]:
        return [f"{name}:label", f"{name}:score"] + [f"{name}:{label}" for label in labels]

    def csv_cells(self, result) -> list[str]:
        return [result.label, f"{result.positive:.6f}"] + [f"{v:.6f}" for v in result.values]

    def short_text(self, result) -> str:
        """One short cell: tables, captions, contact sheets."""
        return f"{result.label} ({max(result.values):.2f})"

    def summary(self, result) -> str:
        """A line for people (the Predict node)."""
        return f"{result.label} (score {result.positive:.2f})"

    # ------------------------------------------------------------ stored results

    def to_stored(self, result) -> tuple[float, str, dict | None]:
        """(score, label, what from_stored needs besides them) for the store's scores table."""
        return result.positive, result.label, self.probs(result)

    def from_stored(self, head: str, score: float, label: str, extra: dict | None):
        values = list(extra.values()) if extra else [score]
        labels = list(extra) if extra else ["score"]
        return HeadResult(head, self, labels, values, score, 0)

    def from_dict(self, head: str, d: dict):
        """The result `to_dict` wrote (a node reading Predict's JSON), views aside."""
        return self.from_stored(head, d["score"], d["label"], d.get("probs"))

    # ------------------------------------------------------------ tags

    def tags(self, head: str, result, rules) -> list[str]:
        """Caption tags for one head's result (see tags.TagRules)."""
        return []

    def tag_vocabulary(self, head: str, result, rules) -> tuple[set[str], list]:
        """Every tag `tags` can produce for this head: words and regex patterns."""
        return set(), []

    # ------------------------------------------------------------ review

    def review(self, path: str, result, expected, head):
        """A ReviewItem when `result` disagrees with `expected` (from `expected_value`), else None."""
        return None

    def expected_value(self, target, head, source: str):
        """What a labelled folder's target means for review: a class name, a score ..."""
        return target

    # ------------------------------------------------------------ training

    def folder_value(self, prefix: str):
        """A category folder's value from its name's prefix ('1' of '1_jpeg'); ValueError if it has none."""
        return float(prefix)

    folder_value_name: str = "value"
    folder_hint: str = "0_reg, 1_chroma"

    def finish_targets(self, values: list, where: str) -> TrainingTargets:
        """Targets for training from the folders' values (normalising them if the kind wants)."""
        return TrainingTargets(list(values), {})

    def check_train_config(self, cfg, source: str) -> None:
        """Raise ConfigError for settings that make no sense for this kind."""

    def train_outputs(self, cfg) -> int:
        return len(cfg.labels) if cfg.labels else 1

    def train_hidden(self, cfg) -> int:
        """The hidden width of the network training builds (the released layout's: from model.clip)."""
        return cfg.hidden

    def train_labels(self, cfg) -> dict[str, str] | None:
        return {str(k): name for k, (name, _) in sorted(cfg.labels.items())} if cfg.labels else None

    def complete_train_config(self, cfg, targets: torch.Tensor):
        """The config with what the data fills in (e.g. class labels); never changes `cfg` itself."""
        return cfg

    def param_groups(self, net: nn.Module, cfg) -> list[dict]:
        """The optimizer's parameter groups (a kind may give some parameters their own rate or decay)."""
        return [{"params": list(net.parameters())}]

    def train_loss(self, net: nn.Module, logits: torch.Tensor, targets: torch.Tensor, cfg) -> torch.Tensor:
        raise NotImplementedError

    def eval_loss(self, values: torch.Tensor, targets: torch.Tensor, cfg) -> float:
        """The validation loss on per-image values (reduced over views, as inference does)."""
        raise NotImplementedError

    def metrics(self, values: torch.Tensor, targets: torch.Tensor, cfg) -> dict:
        raise NotImplementedError

    def predictions(self, values: torch.Tensor) -> np.ndarray:
        """What the metrics file records as the predictions."""
        return values.numpy()

    def format_metrics(self, metrics: dict) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                         if isinstance(v, float) and math.isfinite(v))
