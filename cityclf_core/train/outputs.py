"""What a training run leaves in its output folder.

    {name}.safetensors + {name}.config.json   the head, released layout (loads in `cityclf score`)
    {name}.csv                                 step, samples, lr, train loss, validation loss and metric
    {name}.png                                 those curves
    {name}.metrics.json                        final validation metrics, flat keys
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..confined import atomic_write, naming
from ..errors import ConfigError
from ..grid import line_chart


@dataclass
class TrainResult:
    weights: Path
    config: Path
    log: Path
    curves: Path
    metrics_path: Path
    metrics: dict
    steps_done: int
    stopped_early: bool


@dataclass(frozen=True)
class OutputFiles:
    weights: Path
    config: Path
    log: Path
    curves: Path
    metrics: Path

    @classmethod
    def for_run(cls, out: Path, name: str) -> "OutputFiles":
        return cls(out / f"{name}.safetensors", out / f"{name}.config.json", out / f"{name}.csv",
                   out / f"{name}.png", out / f"{name}.metrics.json")

    def all(self) -> list[Path]:
        return [self.weights, self.config, self.log, self.curves, self.metrics]

    def refuse_existing(self) -> None:
        """Never replace an earlier run's head by accident (a log or curves alone are a run killed before it
        finished: they are written again)."""
        if self.weights.exists() or self.config.exists():
            raise ConfigError(f"{self.weights} (or its log/metrics) already exists; choose a new model.rev, another "
                              "--out, or --overwrite")


class TrainLog:
    """The CSV log, one row per evaluation; appended to when a run resumes. Each row is written whole or not at
    all (a full disk cuts the file back to its last whole row and raises an OSError naming it)."""

    HEADER = ["step", "samples", "lr", "train_loss", "val_loss", "val_metric"]

    def __init__(self, path: Path, append: bool):
        self.path = path
        append = append and path.exists()
        with naming(path):
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC), 0o666)
        if not append:
            self._write(self.HEADER)

    def row(self, step: int, samples: int, lr: float, train_loss: float, val_loss: float, metric: float) -> None:
        self._write([step, samples, f"{lr:.6g}", f"{train_loss:.6g}", f"{val_loss:.6g}", f"{metric:.6g}"])

    def _write(self, fields: list) -> None:
        text = io.StringIO()
        csv.writer(text).writerow(fields)
        data = memoryview(text.getvalue().encode("utf-8"))
        whole = os.fstat(self._fd).st_size
        try:
            with naming(self.path):
                while data:
                    data = data[os.write(self._fd, data):]
        except OSError:
            try:
                os.ftruncate(self._fd, whole)
            except OSError:
                pass
            raise

    def close(self) -> None:
        os.close(self._fd)


def write_metrics(path: Path, metrics: dict) -> None:
    atomic_write(path, (json.dumps(metrics, indent=2, default=float) + "\n").encode("utf-8"))


def draw_curves(path: Path, history: list, metric_name: str, title: str) -> None:
    line_chart({"train loss": [(h[0], h[1]) for h in history], "validation loss": [(h[0], h[2]) for h in history]},
               {f"validation {metric_name}": [(h[0], h[3]) for h in history]}, path,
               title=f"{title}: loss and validation {metric_name} by optimizer step",
               x_title="optimizer step", y_titles=("loss", f"validation {metric_name}"))
