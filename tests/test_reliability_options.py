"""Numbers are checked once, by cityclf_core/numbers.py, for every command, node and training config.

NaN, infinities, negative or zero counts, sizes of nothing are refused at parse time (exit 2, naming the
option) before any model loads; --tile-size means the same for every head that tiles.
"""

from __future__ import annotations

import json
from importlib import import_module

import numpy as np
import pytest
import torch
import yaml
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main

BAD_OPTIONS = [
    ("score", "--workers", "-1"), ("score", "--workers", "0"), ("score", "--batch-size", "0"),
    ("score", "--tile-size", "-5"), ("score", "--tile-size", "0"), ("score", "--tile-size", "big"),
    ("score", "--max-pixels", "0"), ("score", "--top", "nan"), ("score", "--bottom", "-2"),
    ("score", "--min", "nan"), ("score", "--min", "inf"), ("score", "--max", "-inf"),
    ("score", "--min", "TestAesthetics=nan"), ("score", "--max", "H:Pass=NaN"), ("score", "--tag-thresholds", "nan"),
    ("score", "--tag-thresholds", "H = inf"), ("score", "--files-per-shard", "0"),
    ("score", "--num-gpus-per-worker", "-1"), ("embed", "--workers", "-1"), ("embed", "--tile-size", "1.5"),
    ("query", "--min", "nan"), ("query", "--top", "0"), ("grid", "--thumb", "0"), ("grid", "--max", "nan"),
    ("review", "--thumb", "-1"), ("synth", "--per-image", "0"),
]


def command(cmd: str, option: str, value: str) -> list[str]:
    head = {"score": ["score", "img.png", "-m", "/no/such/head.safetensors"],
            "embed": ["embed", "img.png", "--store", "/no/such/s.db", "--clip", "/no/such/clip"],
            "query": ["query", "--store", "/no/such/s.db"], "grid": ["grid", "--store", "/no/such/s.db"],
            "review": ["review", "d", "-m", "/no/such/head.safetensors"],
            "synth": ["synth", "clean", "--out", "/no/such/out"]}[cmd]
    return [*head, f"{option}={value}"]


@pytest.mark.parametrize("cmd,option,value", BAD_OPTIONS)
def test_bad_numbers_are_refused_at_parse_time_naming_the_option(cmd, option, value, capsys):
    with pytest.raises(SystemExit) as e:
        main(command(cmd, option, value))
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}" in err and "Traceback" not in err, err


def test_min_nan_means_nothing_anywhere_so_nothing_moves(tmp_path, score_head_path, capsys):
    Image.fromarray(illustration(40, 30, 0)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path), "-m", str(score_head_path), "--min", "nan", "--move", str(tmp_path / "to")])
    assert (tmp_path / "a.png").exists() and not (tmp_path / "to").exists()


@pytest.fixture
def big_image(tmp_path):
    Image.fromarray(illustration(700, 640, 5)).save(tmp_path / "big.png")
    return tmp_path / "big.png"


def test_tile_size_applies_to_every_head_that_tiles(big_image, tiny_clip_dir, score_head_path, class_head_path,
                                                    capsys):
    def score(head, *extra):
        assert main(["score", str(big_image), "-m", str(head), "--clip", str(tiny_clip_dir), "--format", "jsonl",
                     "--no-progress", *extra]) == 0, capsys.readouterr().err
        row = json.loads(capsys.readouterr().out.splitlines()[0])
        return row.get("score", json.dumps(row.get("probs")))

    for head, forced in ((score_head_path, ["--tiling"]), (class_head_path, [])):
        by_size = [score(head, *forced, *size) for size in ([], ["--tile-size", "200"], ["--tile-size", "600"])]
        assert len(set(by_size)) == 3, (head.name, by_size)
    assert score(score_head_path) == score(score_head_path, "--tile-size", "600")  # whole image: no tiles
    for head in (score_head_path, class_head_path):  # below the CLIP's 32 px input: refused for every kind
        code = main(["score", str(big_image), "-m", str(head), "--clip", str(tiny_clip_dir), "--tiling",
                     "--tile-size", "16", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "--tile-size 16: below this CLIP's input size (32 px)" in err, err


@pytest.fixture
def npy_data(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("0_a", "1_b"):
        (tmp_path / "data" / "CLIP" / label).mkdir(parents=True)
        for i in range(8):
            np.save(tmp_path / "data" / "CLIP" / label / f"{i}.npy", rng.standard_normal((1, 768)).astype(np.float32))
    return tmp_path / "data"


def train_with(tmp_path, npy_data, capsys, model=None, raw: bytes | None = None, **train) -> tuple[int, str]:
    cfg = {"model": {"base": "T", "rev": "v1", "arch": "class", **(model or {})},
           "train": {"lr": 1e-3, "steps": 64, "batch": 8, **train}, "labels": {0: {"name": "A"}, 1: {"name": "B"}}}
    path = tmp_path / "c.yaml"
    path.write_bytes(raw if raw is not None else yaml.safe_dump(cfg).encode())
    code = main(["train", "--config", str(path), "--data", str(npy_data), "--out", str(tmp_path / "out"),
                 "--no-progress"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("setting,expect", [
    ({"weight_decay": -1}, "train.weight_decay -1: must be at least 0"),
    ({"steps": 1.0e18}, "train.steps 1e+18: must be at most"),
    ({"eval_every": 0}, "train.eval_every 0: must be at least 1"),
    ({"cosine": "maybe"}, "train.cosine 'maybe': expected true or false"),
    ({"lr": float("nan")}, "train.lr nan: must be a number"),
    ({"lr": 0}, "train.lr 0: must be above 0"),
    ({"batch": True}, "train.batch True: must be a whole number"),
    ({"model": {"base": "/tmp/elsewhere"}}, "model.base '/tmp/elsewhere' must be a plain name"),
    ({"model": {"rev": "../../x"}}, "model.rev '../../x' must be a plain name"),
    ({"model": {"base": "a/b"}}, "model.base 'a/b' must be a plain name"),
], ids=["weight_decay", "steps", "eval_every", "cosine", "lr-nan", "lr-zero", "batch-bool", "base-absolute",
        "rev-dotdot", "base-separator"])
def test_training_config_values_are_checked(tmp_path, npy_data, capsys, setting, expect):
    model = setting.pop("model", None)
    code, err = train_with(tmp_path, npy_data, capsys, model=model, **setting)
    assert code == 2 and expect in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_config_that_is_not_utf8_is_named(tmp_path, npy_data, capsys):
    code, err = train_with(tmp_path, npy_data, capsys, raw=b"model:\n  base: caf\xe9\n")
    assert code == 2 and f"config {tmp_path / 'c.yaml'} is not UTF-8" in err, err


def test_a_diverging_run_stops_and_writes_no_head(tmp_path, npy_data, capsys):
    code, err = train_with(tmp_path, npy_data, capsys, lr=1e30)
    assert code == 2 and "training diverged at step" in err and "no head was written" in err, err
    assert not (tmp_path / "out" / "T-v1.safetensors").exists()


def test_nodes_refuse_the_same_numbers(pack, capsys):
    nodes = import_module("cityclf_pack.nodes")
    images = [torch.zeros(2, 8, 8, 3)]
    with pytest.raises(Exception, match="threshold nan: must be a number"):
        nodes.CityClfGate().gate(images=images, scores=[0.1, 0.9], threshold=[float("nan")])
    with pytest.raises(Exception, match="top_k -1: must be at least 0"):
        nodes.CityClfSort().sort(images=images, scores=[0.1, 0.9], top_k=[-1])
