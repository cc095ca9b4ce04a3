"""The training loop: a small `Trainer` over embeddings, for any kind of head.

A "step" in the config counts samples, as in the reference (steps 40000,
batch 1); optimizer steps are steps / batch. Each optimizer step takes one
random view of each image in the batch. The loss and metrics are the head's
kind's; AdamW with the schedule of schedule.py. A checkpoint holds everything
(weights, optimizer, schedule, RNG states, position in the epoch), so a
resumed run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError, Interrupted
from ..loading.head_files import save_head
from ..pause_points import pause_point
from ..scoring.encoders import pick_device
from .checkpoints import checkpoint_path, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Dataset
from .evaluate import evaluate
from .interrupt import StopRequests
from .outputs import OutputFiles, TrainLog, TrainResult, draw_curves, write_metrics
from .schedule import make_scheduler


class Trainer:
    """Trains one head on a Dataset; `cfg` and `data` are never changed."""

    def __init__(self, cfg: TrainConfig, data: Dataset, out: str | os.PathLike,
                 log: Callable[[str], None] = print, progress: Callable[[int, int], None] | None = None,
                 on_step: Callable[[int, int, dict], None] | None = None):
        if data.n_train == 0:
            raise ConfigError("no training examples left after the validation split")
        self.cfg = cfg.kind.complete_train_config(cfg, data.train_targets)
        self.data, self.out = data, Path(out)
        self.log, self.progress, self.on_step = log, progress, on_step
        self.kind = self.cfg.kind
        self.files = OutputFiles.for_run(self.out, self.cfg.name)
        self.checkpoint = checkpoint_path(self.out, self.cfg)
        self.device = pick_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)
        self.net = self.kind.build_net(self.cfg.head_config()).to(self.device)
        self.opt = torch.optim.AdamW(self.kind.param_groups(self.net, self.cfg), lr=self.cfg.lr,
                                     weight_decay=self.cfg.weight_decay)
        self.sched = make_scheduler(self.opt, self.cfg)
        self.gen = torch.Generator().manual_seed(self.cfg.seed)
        self.total = self.cfg.optimizer_steps
        self.eval_every = self.cfg.eval_every or max(1, self.total // 25)
        self.save_every = self.cfg.save_every or self.eval_every
        self.state = {"step": 0, "order": None, "pos": 0, "best": None, "best_step": 0, "bad_evals": 0,
                      "history": []}
        self.best_weights: dict | None = None
        self.stopped_early = False
        self.val_views = data.val_views.to(self.device)

    def train(self, resume: str | os.PathLike | None = None, overwrite: bool = False) -> TrainResult:
        """Train to the end (or an early stop), write the head and its files; Ctrl-C leaves a checkpoint."""
        self.out.mkdir(parents=True, exist_ok=True)
        if not overwrite and not resume:
            self.files.refuse_existing()
        if resume:
            self._resume(resume)
        train_log = TrainLog(self.files.log, append=bool(resume))
        with StopRequests() as stop:  # a signal stops the loop between two steps, never inside one
            try:
                self._loop(train_log, stop)
            finally:
                train_log.close()
            if stop.requested and self.state["step"] < self.total and not self.stopped_early:
                self._save_checkpoint()
                raise Interrupted(f"checkpoint saved at step {self.state['step']} of {self.total} ({self.checkpoint}): "
                                  "add --resume to the same command to continue")
            return self._finish()

    # ------------------------------------------------------------ the loop

    def _loop(self, train_log: TrainLog, stop: StopRequests) -> None:
        cfg, data, state = self.cfg, self.data, self.state
        views, targets = data.train_views.to(self.device), data.train_targets.to(self.device)
        counts = data.train_offsets[1:] - data.train_offsets[:-1]
        running = state.setdefault("running", [0.0, 0])  # the train loss since the last evaluation (resumed too)
        while state["step"] < self.total and not stop.requested:
            take = self._next_batch()
            if take is None:
                continue
            idx = torch.tensor(take)
            view = data.train_offsets[idx] + (torch.rand(len(take), generator=self.gen) * counts[idx]).long()
            loss = self._step(views[view.to(self.device)], targets[idx.to(self.device)])
            if not math.isfinite(loss):
                raise self._diverged(f"the training loss is {loss}", state["step"] + 1)
            state["step"] += 1
            running[0] += loss * len(take)
            running[1] += len(take)
            step = state["step"]
            if self.progress:
                self.progress(step, self.total)
            if step % self.eval_every == 0 or step == self.total:
                self._evaluate(step, running[0] / max(running[1], 1), train_log)
                running[:] = [0.0, 0]
                if cfg.early_stopping and state["bad_evals"] >= cfg.early_stopping:
                    self.log(f"early stop at step {step}: no better validation loss for {cfg.early_stopping} "
                             f"evaluations (best at step {state['best_step']})")
                    self.stopped_early = True
                    break
            if step % self.save_every == 0 and step < self.total:
                self._save_checkpoint()

    def _next_batch(self) -> list[int] | None:
        """The next batch of example indices; None when an epoch ended (a new order is drawn)."""
        state, n, batch = self.state, self.data.n_train, self.cfg.batch
        if state["order"] is None or state["pos"] >= n:
            state["order"] = torch.randperm(n, generator=self.gen).tolist()
            state["pos"] = 0
        take = state["order"][state["pos"] : state["pos"] + batch]
        if len(take) < batch and n >= batch:  # drop the ragged tail, as the reference's drop_last
            state["order"] = None
            return None
        state["pos"] += len(take)
        return take

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.net.train()
        loss = self.kind.train_loss(self.net, self.net.logits(x), y, self.cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        pause_point("step", self.state["step"] + 1)
        self.opt.step()
        self.sched.step()
        return loss.item()

    def _validate(self):
        return evaluate(self.net, self.cfg, self.val_views, self.data.val_counts, self.data.val_targets)

    def _evaluate(self, step: int, train_loss: float, train_log: TrainLog) -> None:
        state, metric_name = self.state, self.kind.metric_name
        self._check_weights()
        val_loss, metrics, _ = self._validate()
        pause_point("eval", step)
        lr = self.sched.get_last_lr()[0]
        metric = metrics.get(metric_name, float("nan"))
        train_log.row(step, step * self.cfg.batch, lr, train_loss, val_loss, metric)
        state["history"].append([step, train_loss, val_loss, metric])
        key = val_loss if self.data.val_counts else train_loss
        if state["best"] is None or key < state["best"] - 1e-9:
            state["best"], state["best_step"], state["bad_evals"] = key, step, 0
            self.best_weights = {k: v.clone() for k, v in self.net.state_dict().items()}
        else:
            state["bad_evals"] += 1
        if self.on_step:
            self.on_step(step, self.total, {"train_loss": train_loss, "val_loss": val_loss, metric_name: metric,
                                            "lr": lr})

    def _check_weights(self) -> None:
        bad = [n for n, p in self.net.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise self._diverged(f"the weights {', '.join(bad[:3])} hold NaN or infinite values",
                                 self.state["step"])

    def _diverged(self, what: str, step: int) -> ConfigError:
        return ConfigError(f"training diverged at step {step}: {what}; no head was written. "
                           f"Lower train.lr (now {self.cfg.lr:g}) and train again")

    # ------------------------------------------------------------ checkpoints and the end

    def _save_checkpoint(self) -> None:
        save_checkpoint(self.checkpoint, self.net, self.opt, self.sched, self.gen, self.state, self.best_weights,
                        pause=lambda: pause_point("checkpoint", self.state["step"]))

    def _resume(self, resume) -> None:
        path = Path(resume) if str(resume) not in ("", "auto") else self.checkpoint
        if not path.exists():
            raise ConfigError(f"nothing to resume: {path} does not exist")
        self.state, self.best_weights = load_checkpoint(path, self.net, self.opt, self.sched, self.gen)
        self.log(f"resumed from {path} at step {self.state['step']} of {self.total}")

    def _finish(self) -> TrainResult:
        cfg, files = self.cfg, self.files
        if cfg.early_stopping and self.best_weights is not None:
            self.net.load_state_dict(self.best_weights)  # the best validation loss, not the last
        self._check_weights()
        self.net.eval()
        save_head(self.net, cfg.head_config(), files.weights, overwrite=True)
        val_loss, metrics, _ = self._validate()
        facts = self.data.facts
        metrics = {"name": cfg.name, "arch": cfg.arch, "val_loss": val_loss, **metrics, "n_train": self.data.n_train,
                   "steps": self.state["step"], "samples": self.state["step"] * cfg.batch,
                   "stopped_early": self.stopped_early,
                   **({"score_range": list(facts["score_range"])} if "score_range" in facts else {})}
        write_metrics(files.metrics, metrics)
        draw_curves(files.curves, self.state["history"], self.kind.metric_name, cfg.name)
        if self.checkpoint.exists():
            self.checkpoint.unlink()  # finished: the checkpoint is ours and no longer needed
        return TrainResult(files.weights, files.config, files.log, files.curves, files.metrics, metrics,
                           self.state["step"], self.stopped_early)


def train(cfg: TrainConfig, data: Dataset, out: str | os.PathLike, resume: str | os.PathLike | None = None,
          overwrite: bool = False, on_step: Callable[[int, int, dict], None] | None = None,
          log: Callable[[str], None] = print, progress: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train a head on `data` and write it with its log, curves and metrics into `out` (see Trainer)."""
    return Trainer(cfg, data, out, log=log, progress=progress, on_step=on_step).train(resume, overwrite)
