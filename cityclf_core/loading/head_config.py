"""`HeadConfig`: what a head's released `<stem>.config.json` sidecar says (name, revision, kind, labels, sizes, and
any keys beyond the released ones), and where the sidecar of a weights file is. No torch: the catalogue and
`cityclf models` use it without loading a network (head_files.py reads and writes the files)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WeightsError
from ..kinds import HeadKind, get_kind, kind_choices, kind_for_outputs, kind_names


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


__all__ = ["RELEASED_KEYS", "HeadConfig", "config_path_for"]
