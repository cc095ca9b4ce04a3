"""The head ("predictor") network that turns a CLIP image embedding into a score or class.

The layer names are those of the released CityClassifiers files, so their
state dicts load unchanged and files we write load in the reference code::

    up.0          Linear F->H
    up.1.long.0   Linear H->H, LeakyReLU(0.1)     \
    up.1.long.2   Linear H->H, LeakyReLU(0.1)      } residual: ReLU(long(x) + x)
    up.1.long.4   Linear H->H                     /
    down.0        Linear H->128
    down.1        Linear 128->64, Dropout(0.1), LeakyReLU(0.01)
    down.4        Linear 64->32
    down.5        Linear 32->N
    output        the head's kind (kinds/): score (tanh + 1) / 2 in [0, 1]; class softmax

Heads always run in float32, whatever the CLIP's dtype.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import WeightsError
from .kinds import HeadKind, get_kind, kind_choices, kind_for_outputs, kind_names
from .weights import read_json, read_safetensors

if TYPE_CHECKING:
    from .catalogue import Release

PREDICT_ROWS = 4096  # embeddings per head forward

#: The 16 tensors of a released head, in the order the reference model defines them.
STATE_DICT_KEYS = tuple(
    f"{layer}.{kind}"
    for layer in ("up.0", "up.1.long.0", "up.1.long.2", "up.1.long.4", "down.0", "down.1", "down.4", "down.5")
    for kind in ("weight", "bias")
)


class ResidualBlock(nn.Module):
    """Three H->H linears with LeakyReLU(0.1) between them, added to the input, then ReLU."""

    def __init__(self, width: int):
        super().__init__()
        self.long = nn.Sequential(
            nn.Linear(width, width),
            nn.LeakyReLU(0.1),
            nn.Linear(width, width),
            nn.LeakyReLU(0.1),
            nn.Linear(width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.long(x) + x)


class HeadNet(nn.Module):
    """The released head architecture (features F, hidden H, outputs N)."""

    def __init__(self, features: int = 768, hidden: int = 1024, outputs: int = 1):
        super().__init__()
        self.features, self.hidden, self.outputs = features, hidden, outputs
        self.up = nn.Sequential(nn.Linear(features, hidden), ResidualBlock(hidden))
        self.down = nn.Sequential(
            nn.Linear(hidden, 128),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.LeakyReLU(),
            nn.Linear(64, 32),
            nn.Linear(32, outputs),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation outputs [n, N]; training losses work on these."""
        return self.down(self.up(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's forward: logits through its kind's activation (1 output: score, more: classes)."""
        return kind_for_outputs(self.outputs).activate(self.logits(x))


@dataclass(frozen=True)
class HeadConfig:
    """What the released `<stem>.config.json` sidecar says about a head."""

    name: str
    rev: str | None = None
    arch: str = "score"
    labels: dict[str, str] | None = None
    features: int = 768
    hidden: int = 1024
    outputs: int = 1
    #: keys of the sidecar beyond the released ones, kept as they are (kinds and newer versions add some)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.arch not in kind_names():
            raise WeightsError(f"head {self.name!r}: arch must be {kind_choices()}, not {self.arch!r}")
        for n in (self.features, self.hidden, self.outputs):
            if not isinstance(n, int) or n < 1:
                raise WeightsError(f"head {self.name!r}: sizes must be positive integers, got {n!r}")
        self.kind.check_config(self)

    @property
    def kind(self) -> HeadKind:
        return get_kind(self.arch)

    @property
    def display_name(self) -> str:
        return f"{self.name}-{self.rev}" if self.rev else self.name

    @property
    def label_names(self) -> list[str]:
        """One name per output, as the head's kind names them."""
        return self.kind.label_names(self)

    def to_json_dict(self) -> dict:
        """The released sidecar format, keys in the released order."""
        return {
            "name": self.name,
            "rev": self.rev,
            "arch": self.arch,
            "labels": dict(self.labels) if self.labels is not None else None,
            "model_params": {"features": self.features, "hidden": self.hidden, "outputs": self.outputs},
            **self.extra,
        }

    @classmethod
    def from_json_dict(cls, data: dict, source: str, default_name: str) -> "HeadConfig":
        params = data.get("model_params") or {}
        if not isinstance(params, dict):
            raise WeightsError(f"{source}: 'model_params' must be an object")
        labels = data.get("labels")
        if labels is not None:
            if not isinstance(labels, dict):
                raise WeightsError(f"{source}: 'labels' must be an object like {{\"0\": \"Pass\"}} or null")
            labels = {str(k): str(v) for k, v in labels.items()}
        try:
            outputs = int(params.get("outputs", len(labels) if labels else 1))
            features = int(params.get("features", 768))
            hidden = int(params.get("hidden", 1024))
        except (TypeError, ValueError):
            raise WeightsError(f"{source}: model_params must hold integers") from None
        arch = data.get("arch") or kind_for_outputs(outputs).name
        return cls(
            name=str(data.get("name") or default_name),
            rev=None if data.get("rev") is None else str(data.get("rev")),
            arch=arch,
            labels=labels,
            features=features,
            hidden=hidden,
            outputs=outputs,
            extra={k: v for k, v in data.items() if k not in RELEASED_KEYS},
        )


RELEASED_KEYS = ("name", "rev", "arch", "labels", "model_params")


def config_path_for(weights_path: str | os.PathLike) -> Path:
    """`X.safetensors` -> `X.config.json`, the released sidecar name."""
    p = Path(weights_path)
    return p.with_name(p.stem + ".config.json")


def expected_shapes(features: int, hidden: int, outputs: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for prefix, (fan_out, fan_in) in {
        "up.0": (hidden, features),
        "up.1.long.0": (hidden, hidden),
        "up.1.long.2": (hidden, hidden),
        "up.1.long.4": (hidden, hidden),
        "down.0": (128, hidden),
        "down.1": (64, 128),
        "down.4": (32, 64),
        "down.5": (outputs, 32),
    }.items():
        shapes[f"{prefix}.weight"] = (fan_out, fan_in)
        shapes[f"{prefix}.bias"] = (fan_out,)
    return shapes


def validate_state_dict(sd: dict[str, torch.Tensor], source: str) -> tuple[int, int, int]:
    """Check the released layout; return (features, hidden, outputs) read from the shapes."""
    missing = [k for k in STATE_DICT_KEYS if k not in sd]
    unexpected = sorted(k for k in sd if k not in STATE_DICT_KEYS)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unexpected:
            more = f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
            parts.append(f"unexpected {', '.join(unexpected[:5])}{more}")
        raise WeightsError(
            f"{source} is not a CityClassifiers head: {'; '.join(parts)}. "
            "Expected the 16 tensors up.0, up.1.long.{0,2,4}, down.{0,1,4,5} (.weight/.bias)."
        )
    w0, w5 = sd["up.0.weight"], sd["down.5.weight"]
    if w0.ndim != 2 or w5.ndim != 2:
        raise WeightsError(f"{source}: up.0.weight and down.5.weight must be matrices")
    hidden, features = int(w0.shape[0]), int(w0.shape[1])
    outputs = int(sd["down.5.bias"].shape[0]) if sd["down.5.bias"].ndim == 1 else -1
    for key, shape in expected_shapes(features, hidden, outputs).items():
        if tuple(sd[key].shape) != shape:
            raise WeightsError(
                f"{source}: tensor {key} has shape {tuple(sd[key].shape)}, expected {shape} "
                f"for a head with features={features}, hidden={hidden}, outputs={outputs}"
            )
    for key in STATE_DICT_KEYS:
        t = sd[key]
        if not t.is_floating_point():
            raise WeightsError(f"{source}: tensor {key} has dtype {t.dtype}, expected floating point")
        if not bool(torch.isfinite(t).all()):
            raise WeightsError(f"{source}: tensor {key} holds NaN or infinite values; the file is damaged")
    return features, hidden, outputs


@dataclass
class Head:
    """A loaded head: the network, what it predicts, and where it came from.

    `release` is set when the file is one of the catalogue's known releases
    (recognised by checksum); it supplies the CLIP pairing and tile policy.
    """

    net: nn.Module  # HeadNet for the released kinds; a kind may build its own
    config: HeadConfig
    path: Path | None = None
    sha256: str | None = None
    release: Release | None = None
    display: str | None = None

    @property
    def name(self) -> str:
        if self.display:
            return self.display
        if self.release is not None:
            return self.release.name
        if self.config.rev or self.path is None:
            return self.config.display_name
        return self.path.stem

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def kind(self) -> HeadKind:
        return self.config.kind

    @property
    def labels(self) -> list[str]:
        return self.config.label_names

    @property
    def features(self) -> int:
        return self.config.features

    @torch.inference_mode()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[n, F] embeddings (any dtype/device) -> [n, N] float32 scores or probabilities on the CPU."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.features:
            raise WeightsError(
                f"head {self.name} takes {self.features}-d CLIP embeddings, "
                f"got shape {tuple(embeddings.shape)}"
            )
        param = next(self.net.parameters())
        x = embeddings.to(device=param.device, dtype=torch.float32)
        kind = self.kind
        if x.shape[0] <= PREDICT_ROWS:
            return kind.activate(self.net.logits(x)).float().cpu()
        # in blocks: the activations of a block stay in cache (measurably faster on CPUs)
        return torch.cat([kind.activate(self.net.logits(block)).float().cpu() for block in x.split(PREDICT_ROWS)])

    def to(self, device) -> "Head":
        self.net.to(device)
        return self


def head_from_state_dict(
    sd: dict[str, torch.Tensor], source: str, config: HeadConfig | None, default_name: str
) -> tuple[nn.Module, HeadConfig]:
    """The network of `sd`, checked against its config's kind (none: a released-layout head, kind by outputs)."""
    if config is None:
        features, hidden, outputs = validate_state_dict(sd, source)
        config = HeadConfig(name=default_name, arch=kind_for_outputs(outputs).name, features=features,
                            hidden=hidden, outputs=outputs)
    else:
        features, hidden, outputs = config.kind.read_layout(sd, source)
        if (config.features, config.hidden, config.outputs) != (features, hidden, outputs):
            raise WeightsError(
                f"{source}: its config says features={config.features}, hidden={config.hidden}, "
                f"outputs={config.outputs}, but the weights have features={features}, hidden={hidden}, "
                f"outputs={outputs}. The config sidecar belongs to another model; fix or remove it."
            )
    net = config.kind.build_net(config)
    net.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()})
    net.eval()
    return net, config


def read_config_sidecar(path: str | os.PathLike, default_name: str) -> HeadConfig:
    data = read_json(path, "head config")
    return HeadConfig.from_json_dict(data, str(path), default_name)


def load_head_file(
    path: str | os.PathLike,
    config: HeadConfig | str | os.PathLike | None = None,
    fallback_config: HeadConfig | None = None,
) -> Head:
    """Load a head from a .safetensors file.

    The config is, in order: `config` if given (a HeadConfig or a JSON path), the
    `<stem>.config.json` sidecar if present, `fallback_config` (the catalogue's,
    for a recognised release), else inferred from the shapes (outputs from
    `down.5.bias`, arch score when 1 output).
    """
    path = Path(path)
    sd = read_safetensors(path, "head weights")
    if isinstance(config, (str, os.PathLike)):
        config = read_config_sidecar(config, path.stem)
    if config is None:
        sidecar = config_path_for(path)
        if sidecar.is_file():
            config = read_config_sidecar(sidecar, path.stem)
        else:
            config = fallback_config
    net, config = head_from_state_dict(sd, str(path), config, path.stem)
    return Head(net=net, config=config, path=path)


def save_head(net: nn.Module, config: HeadConfig, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `path` (.safetensors, released layout, float32, no metadata) and its config sidecar."""
    from .filemode import save_safetensors

    path = Path(path)
    sidecar = config_path_for(path)
    if not overwrite:
        for p in (path, sidecar):
            if p.exists():
                raise WeightsError(f"{p} already exists; choose another name or allow overwriting")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path)
    sidecar.write_text(json.dumps(config.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    return path


__all__ = [
    "STATE_DICT_KEYS",
    "Head",
    "HeadConfig",
    "HeadNet",
    "ResidualBlock",
    "config_path_for",
    "expected_shapes",
    "load_head_file",
    "save_head",
    "validate_state_dict",
]
