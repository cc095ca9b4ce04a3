"""The released head ("predictor") network, the one the score and class kinds build.

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

import torch
from torch import nn

from ..errors import WeightsError
from .registry import kind_for_outputs

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


__all__ = ["STATE_DICT_KEYS", "HeadNet", "ResidualBlock", "expected_shapes", "validate_state_dict"]
