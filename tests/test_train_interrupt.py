"""Training interrupted anywhere resumes to the same head, bit for bit; a run's own leftovers never block a rerun.

The moments are events, not times: CITYCLF_PAUSE_AT (cityclf_core/pause_points.py) makes the real
`cityclf train` process stop itself inside step N, inside the evaluation at step N, or inside the checkpoint
write at step N; the test then sends SIGINT (Ctrl-C) and SIGCONT, so the signal lands exactly there.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cityclf_core.train import load_config, load_npy_dataset, train

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVAL_EVERY = 40, 4  # optimizer steps (320 samples of batch 8), an evaluation and a checkpoint every 4


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("interrupt")
    rng = np.random.default_rng(0)
    for label, shift in (("0_cool", -0.3), ("1_warm", 0.3)):
        (folder / "data" / "CLIP" / label).mkdir(parents=True)
        for i in range(24):
            emb = (rng.standard_normal((2, 768)) * 0.5 + shift).astype(np.float32)
            np.save(folder / "data" / "CLIP" / label / f"{i:03d}.npy", emb)
    config = {"model": {"base": "Cut", "rev": "v1", "arch": "class"},
              "train": {"lr": 3e-3, "steps": STEPS * 8, "batch": 8, "val_fraction": 0.25, "seed": 3,
                        "eval_every": EVAL_EVERY},
              "labels": {0: {"name": "Cool"}, 1: {"name": "Warm"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def cityclf_train(folder: Path, out: Path, *extra: str, pause_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CITYCLF_PAUSE_AT", None)
    if pause_at:
        env["CITYCLF_PAUSE_AT"] = pause_at
    return subprocess.Popen([sys.executable, "-m", "cityclf_core", "train", "--config", str(folder / "config.yaml"),
                             "--data", str(folder / "data"), "--out", str(out), "--no-progress", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupt_at(proc: subprocess.Popen, point: str) -> tuple[int, str]:
    """Wait until the process stops itself at `point`, then Ctrl-C it there; (exit status, stderr)."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns when it stopped (or, wrongly, ended)
    assert os.WIFSTOPPED(status), f"the run ended before reaching {point}: {proc.stderr.read()}"
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def seeded_points(seed: int) -> list[str]:
    """10 moments in increasing order: 4 inside steps, 3 inside evaluations, 3 inside checkpoint writes."""
    rng = random.Random(seed)
    evals = [s for s in range(EVAL_EVERY, STEPS, EVAL_EVERY)]
    chosen_evals = rng.sample(evals, 6)
    points = {s: "eval" for s in chosen_evals[:3]} | {s: "checkpoint" for s in chosen_evals[3:]}
    points |= {s: "step" for s in rng.sample([s for s in range(1, STEPS) if s not in points], 4)}
    return [f"{points[s]}:{s}" for s in sorted(points)]


def test_sigint_anywhere_then_resume_gives_the_uninterrupted_head(run_folder, tmp_path):
    whole = cityclf_train(run_folder, tmp_path / "whole")
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    reference = (tmp_path / "whole" / "Cut-v1.safetensors").read_bytes()

    out = tmp_path / "parts"
    points = seeded_points(17)
    assert {p.split(":")[0] for p in points} == {"step", "eval", "checkpoint"}
    for i, point in enumerate(points):
        proc = cityclf_train(run_folder, out, *(["--resume"] if i else []), pause_at=point)
        code, err = interrupt_at(proc, point)
        step = int(point.split(":")[1])
        assert code == 130, err
        assert f"checkpoint saved at step {step} of {STEPS}" in err and err.count("--resume") == 1, err
        assert not (out / "Cut-v1.safetensors").exists()
        assert not list(out.glob("*.tmp"))  # the checkpoint was renamed into place, whatever was interrupted
    last = cityclf_train(run_folder, out, "--resume")
    _, err = last.communicate(timeout=300)
    assert last.returncode == 0, err
    assert (out / "Cut-v1.safetensors").read_bytes() == reference
    assert not (out / "Cut-v1.checkpoint.safetensors").exists()


def test_a_run_killed_before_its_first_checkpoint_is_simply_run_again(run_folder, tmp_path):
    cfg = load_config(run_folder / "config.yaml")
    data = load_npy_dataset(cfg, run_folder / "data" / "CLIP")
    out = tmp_path / "out"
    out.mkdir()
    (out / "Cut-v1.csv").write_text("step,samples\n1,8\n")  # what a kill -9 at the first steps leaves
    result = train(cfg, data, out, log=lambda *a: None)
    assert result.weights.is_file() and result.log.read_text().count("step,samples") == 1
