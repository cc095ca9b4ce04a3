"""Rating heads from other projects: one number on a 0..10 scale, from the L2-normalised CLIP embedding.

LAION's improved aesthetic predictor (laion_aesthetic.py) and waifu-scorer
(waifu_scorer.py) are small MLPs on the projected image embedding of OpenAI's
CLIP ViT-L/14 (224 px), divided by its L2 norm -- the same embedding the
released CityClassifiers heads take, before normalising. The network
normalises its input itself (`logits`), so one CLIP pass and the embedding
store serve these heads and CityAesthetics alike.

What a result says:

    values   [rating]   the head's own number, on its native scale ("6.3/10" as the label)
    score    clamp(rating / 10, 0, 1)   fixed, the same for every image and batch; Gate and Sort use it

A kind here is its network (`net_layers`, a `layers` Sequential in the
published state-dict layout) plus what differs: the activation of the raw
output (waifu-scorer clamps to 0..10 as its own code does).

Training (`cityclf train`, model.arch: laion-aesthetic or waifu-scorer): the
target is the folder's number itself, 0..10 (folders `0` ... `10`, or
`6.5_good`), no min-max normalisation, so a fine-tuned head keeps the scale;
the loss is MSE on the raw output, as both projects trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, WeightsError
from .score import ScoreKind

if TYPE_CHECKING:  # torch is imported where the network (rating_nets.py) is built or trained
    import torch
    from torch import nn

SCALE = 10.0
RATING_LOSSES = ("mse", "l1")


class RatingKind(ScoreKind):
    """A head rating images 0..10; subclasses give `width` (the first layer's size) and `net_layers`."""

    description = "rating 0..10 (score = rating / 10)"
    clip = "openai/clip-vit-large-patch14"
    tiles_by_default = False
    folder_value_name = "rating"
    folder_hint = "0 ... 10, or 6.5_good"
    width: int = 0

    def net_layers(self, features: int) -> list[nn.Module]:
        raise NotImplementedError

    # ------------------------------------------------------------ files

    def build_net(self, config) -> nn.Module:
        from .rating_nets import RatingNet  # imports torch: only when a head is built

        return RatingNet(self.net_layers(config.features))

    def label_names(self, config) -> list[str]:
        return ["rating"]

    def _shapes(self, features: int) -> dict[str, tuple[int, ...]]:
        import torch  # a weights file is being read: torch is loaded already

        from .rating_nets import RatingNet

        with torch.device("meta"):
            net = RatingNet(self.net_layers(features))
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}

    def recognises(self, state_dict: dict) -> bool:
        import torch  # a weights file is being read: torch is loaded already

        first = state_dict.get("layers.0.weight")
        if not isinstance(first, torch.Tensor) or first.ndim != 2:
            return False
        expected = self._shapes(int(first.shape[1]))
        parameters = {k for k in expected if k.endswith((".weight", ".bias"))}
        return parameters <= state_dict.keys() <= expected.keys()

    def read_layout(self, state_dict: dict, source: str) -> tuple[int, int, int]:
        if not self.recognises(state_dict):
            raise WeightsError(f"{source} is not a {self.name} head ({self.layout_hint}); its keys are "
                               f"{', '.join(sorted(state_dict)[:8])}; check the config sidecar's arch")
        features = int(state_dict["layers.0.weight"].shape[1])
        expected = self._shapes(features)
        missing = sorted(expected.keys() - state_dict.keys())
        if missing:
            raise WeightsError(
                f"{source}: its BatchNorm running statistics are missing ({', '.join(missing[:6])}"
                f"{' ...' if len(missing) > 6 else ''}); a {self.name} head cannot score without them. The file "
                "was saved without its buffers: download the original again.")
        for key, shape in expected.items():
            t = state_dict[key]
            if tuple(t.shape) != shape:
                raise WeightsError(f"{source}: tensor {key} has shape {tuple(t.shape)}, expected {shape} for a "
                                   f"{self.name} head on {features}-d embeddings")
            if t.is_floating_point() and not bool(t.isfinite().all()):
                raise WeightsError(f"{source}: tensor {key} holds NaN or infinite values; the file is damaged")
        return features, self.width, 1

    # ------------------------------------------------------------ inference

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def positive(self, values: torch.Tensor) -> torch.Tensor:
        return (values[:, :1] / SCALE).clamp(0.0, 1.0)

    def label(self, result) -> str:
        return f"{result.values[0]:.1f}/10"

    def value_of(self, result, label):
        return result.values[0] if label == "rating" else result.positive

    def to_dict(self, result) -> dict:
        return {**super().to_dict(result), "rating": result.values[0]}

    def jsonl_fields(self, result) -> dict:
        return {"score": result.positive, "rating": result.values[0], "label": result.label}

    def csv_columns(self, name, labels):
        return [f"{name}:label", f"{name}:score", f"{name}:rating"]

    def csv_cells(self, result):
        return [result.label, f"{result.positive:.6f}", f"{result.values[0]:.6f}"]

    def short_text(self, result) -> str:
        return result.label

    def summary(self, result) -> str:
        return f"{result.label} (score {result.positive:.2f})"

    def to_stored(self, result):
        return result.positive, result.label, {"rating": result.values[0]}

    def from_dict(self, head, d):
        return self.from_stored(head, d["score"], d["label"], {"rating": d["rating"]})

    # ------------------------------------------------------------ review

    def review(self, path, result, expected, head):
        from .base import ReviewItem

        target, rating = float(expected), result.values[0]
        return ReviewItem(path, f"{target:.1f}", result.label, rating, target, abs(rating - target), "off by")

    # ------------------------------------------------------------ training

    def folder_value(self, prefix: str):
        value = float(prefix)
        if not 0 <= value <= SCALE:
            raise ValueError(f"a {self.name} rating is 0..10, not {prefix}")
        return value

    def finish_targets(self, values, where):
        from .base import TrainingTargets

        return TrainingTargets(list(values), {})

    def check_train_config(self, cfg, source):
        if cfg.labels:
            raise ConfigError(f"{source}: a {self.name} head has no labels; remove 'labels'")
        if cfg.loss not in (None, *RATING_LOSSES):
            raise ConfigError(f"{source}: train.loss for a {self.name} head is one of {', '.join(RATING_LOSSES)}")
        if cfg.clip != "CLIP":
            raise ConfigError(f"{source}: a {self.name} head takes 768-d ViT-L/14 embeddings; model.clip must be CLIP")

    def train_hidden(self, cfg) -> int:
        return self.width

    def _loss_fn(self, cfg):
        from torch import nn  # training only: scoring and reading results need no torch here

        return {"mse": nn.MSELoss(), "l1": nn.L1Loss()}[cfg.loss or "mse"]

    def train_loss(self, net, logits, targets, cfg):
        return self._loss_fn(cfg)(logits[:, 0], targets)


__all__ = ["RATING_LOSSES", "SCALE", "RatingKind"]
