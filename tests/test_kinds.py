"""Head kinds: a new kind is one class and one registry entry, and then works everywhere.

The toy kind below -- a 2-output regression head ("pair": two numbers in
[0, 1], its score their mean) -- is defined here, in the test, and is scored,
stored, selected, trained and tagged through the public paths without any
change to library code.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import illustration
from PIL import Image

from cityclf_core import HeadConfig, HeadKind, ScoringModel, get_kind, load_head, register_kind, save_head
from cityclf_core.cli import main
from cityclf_core.errors import WeightsError
from cityclf_core.kinds import TrainingTargets, kind_names, result_from_dict, unregister_kind
from cityclf_core.kinds.released import HeadNet
from cityclf_core.metrics import score_metrics
from cityclf_core.scoring.results import HeadResult
from cityclf_core.store import EmbeddingStore


class PairKind(HeadKind):
    name = "pair"
    description = "two numbers 0..1"
    metric_name = "mae"
    folder_value_name = "pair of numbers"
    folder_hint = "0.2,0.8_name"

    def check_config(self, config):
        if config.outputs != 2:
            raise WeightsError(f"head {config.name!r}: a pair head has 2 outputs")

    def activate(self, logits):
        return torch.sigmoid(logits)

    def positive(self, values):
        return values.mean(dim=1, keepdim=True)

    def label(self, result):
        return "/".join(f"{v:.2f}" for v in result.values)

    def probs(self, result):
        return dict(zip(result.labels, result.values))

    def jsonl_fields(self, result):
        return {"pair": result.values, "mean": result.positive}

    def tags(self, head, result, rules):
        return ["pair_high" if result.positive >= 0.5 else "pair_low"]

    def tag_vocabulary(self, head, result, rules):
        return {"pair_high", "pair_low"}, []

    def folder_value(self, prefix):
        a, b = prefix.split(",")
        return [float(a), float(b)]

    def finish_targets(self, values, where):
        return TrainingTargets(list(values), {})

    def train_outputs(self, cfg):
        return 2

    def train_loss(self, net, logits, targets, cfg):
        return torch.nn.functional.mse_loss(self.activate(logits), targets)

    def eval_loss(self, values, targets, cfg):
        return float(torch.nn.functional.mse_loss(values, targets))

    def metrics(self, values, targets, cfg):
        return score_metrics(values.mean(dim=1).numpy(), targets.mean(dim=1).numpy())


@pytest.fixture
def pair_kind():
    kind = register_kind(PairKind())
    yield kind
    unregister_kind("pair")


@pytest.fixture
def pair_head_path(tmp_path, pair_kind):
    torch.manual_seed(3)
    config = HeadConfig(name="Pair", rev="v1", arch="pair", labels={"0": "left", "1": "right"}, hidden=64, outputs=2)
    return save_head(HeadNet(768, 64, 2), config, tmp_path / "models" / "Pair-v1.safetensors")


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        Image.fromarray(illustration(60 + 10 * i, 50, 40 + i)).save(d / f"p{i}.png")
    return d


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_builtin_kinds_are_registered_and_unknown_ones_named():
    assert kind_names()[:2] == ["score", "class"]
    with pytest.raises(WeightsError, match="unknown head kind .*'regression'.*'score', 'class', "
                                           "'laion-aesthetic' or 'waifu-scorer'"):
        get_kind("regression")


def test_a_kind_name_cannot_be_taken_twice(pair_kind):
    with pytest.raises(ValueError, match="already registered"):
        register_kind(PairKind())


def test_toy_kind_loads_and_scores_through_the_library(pair_head_path, encoder):
    head = load_head(pair_head_path)
    assert head.kind.name == "pair" and head.labels == ["left", "right"]
    model = ScoringModel().add(head, encoder)
    results = model.score(torch.rand(2, 48, 40, 3))
    r = results[0]["Pair-v1"]
    assert r.arch == "pair" and len(r.values) == 2
    assert r.score == pytest.approx(sum(r.values) / 2, abs=1e-6)
    assert re.fullmatch(r"\d\.\d\d/\d\.\d\d", r.label)
    assert r.to_dict()["probs"] == {"left": r.values[0], "right": r.values[1]}


def test_toy_kind_scores_stores_selects_and_tags_from_the_cli(pair_head_path, images, tiny_clip_dir, tmp_path,
                                                              capsys):
    db = tmp_path / "s.db"
    code, out, err = run(["score", str(images), "--store", str(db), "-m", str(pair_head_path), "--clip",
                          str(tiny_clip_dir), "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4 and all(set(r) == {"path", "model", "pair", "mean"} for r in rows)
    means = {r["path"]: r["mean"] for r in rows}
    # stored with its kind, and rebuilt by it
    with EmbeddingStore(db) as store:
        stored = store.scores()
    assert {s["Pair-v1"].kind for s in stored.values()} == {"pair"}
    cut = sorted(means.values())[1]
    code, out, err = run(["query", "--store", str(db), "--min", f"Pair={cut}", "--format", "jsonl", "--write-tags",
                          "--tag-bucket", "none"], capsys)
    assert code == 0, err
    kept = [json.loads(line) for line in out.splitlines()]
    assert {r["path"] for r in kept} == {p for p, m in means.items() if m >= cut}
    assert all(r["mean"] == pytest.approx(means[r["path"]], abs=1e-6) for r in kept)
    for r in kept:
        tag = "pair_high" if r["mean"] >= 0.5 else "pair_low"
        assert (images / (r["path"].rsplit("/", 1)[1].rsplit(".", 1)[0] + ".txt")).read_text().strip() == tag


def test_toy_kind_trains_from_its_own_folder_layout(pair_kind, tiny_clip_dir, tmp_path, capsys):
    data = tmp_path / "data"
    for folder, seed in (("0.1,0.9_a", 0), ("0.8,0.3_b", 10)):
        (data / folder).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(illustration(40, 40, seed + i)).save(data / folder / f"{i}.png")
    cfg = tmp_path / "pair.yaml"
    cfg.write_text("model:\n  base: ToyPair\n  rev: v0\n  arch: pair\n"
                   "labels:\n  0: {name: left}\n  1: {name: right}\n"
                   "train:\n  lr: 0.001\n  steps: 96\n  batch: 8\n  val_fraction: 0.2\n")
    code, out, err = run(["train", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "out"),
                          "--clip", str(tiny_clip_dir), "--no-progress"], capsys)
    assert code == 0, err
    head = load_head(tmp_path / "out" / "ToyPair-v0.safetensors")
    assert head.kind.name == "pair" and head.labels == ["left", "right"]
    metrics = json.loads((tmp_path / "out" / "ToyPair-v0.metrics.json").read_text())
    assert metrics["arch"] == "pair" and "mae" in metrics


@pytest.mark.parametrize("result", [
    HeadResult("Aes", get_kind("score"), ["score"], [0.7], 0.7, 1),
    HeadResult("Cmp", get_kind("class"), ["Pass", "JPEG", "WEBP"], [0.2, 0.5, 0.3], 0.8, 5),
    HeadResult("Pop", get_kind("popularity-multitask"),
               ["popularity", "sanity:general", "sanity:sensitive", "sanity:explicit", "ai:human", "ai:ai"],
               [0.66, 0.7, 0.2, 0.1, 0.9, 0.1], 0.66, 1),
    HeadResult("Laion", get_kind("laion-aesthetic"), ["rating"], [6.34], 0.634, 1),
    HeadResult("Waifu", get_kind("waifu-scorer"), ["rating"], [7.5], 0.75, 1),
])
def test_a_result_read_back_from_its_json_says_the_same(result):
    """Show reads Predict's JSON: every kind's result survives the trip (its label and its summary line)."""
    back = result_from_dict(result.head, json.loads(json.dumps(result.to_dict())))
    assert (back.label, back.summary(), back.score, back.views) == (result.label, result.summary(), result.score,
                                                                      result.views)
