"""Pixiv popularity end to end with a tiny CLIP: synth -> ingest -> embed -> train (a), (b), (c) -> eval -> score."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
import yaml

import cityclf_core
from cityclf_core.cli import main
from cityclf_core.pixiv.config import load_settings
from cityclf_core.pixiv.records import load_records
from cityclf_core.pixiv.splits import make_split
from cityclf_core.pixiv.targets import Target

MODELS = ["popularity", "popularity-multitask", "popularity-attention"]


@pytest.fixture(scope="module")
def one_thread():
    # two cores shared by many processes: one thread avoids oversubscription stalls in tiny training steps
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, one_thread):
    from cityclf_core.samples import build_tiny_clip

    root = tmp_path_factory.mktemp("pixiv")
    clip = build_tiny_clip(root / "clip", image_size=32, patch_size=8, seed=0)
    data, store = root / "data", root / "px.db"
    assert main(["pixiv", "synth", str(data), "--works", "240", "--artists", "20", "--seed", "0"]) == 0
    assert main(["pixiv", "ingest", str(data)]) == 0
    assert main(["embed", str(data), "--store", str(store), "--clip", str(clip), "--no-progress"]) == 0
    config = root / "pixiv.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"dataset": "data", "store": "px.db", "clip": "clip", "split": "artist", "test_fraction": 0.3},
        "target": {"name": "weighted_log", "alpha": 0.7},
        "model": {"base": "PixivPop", "rev": "v1", "arch": "popularity-multitask", "width": 64},
        "train": {"lr": 0.002, "epochs": 60, "batch": 32, "seed": 0},
        "eval": {"splits": ["artist", "time", "random"], "seeds": [0, 1], "models": MODELS, "bootstrap": 200},
    }), encoding="utf-8")
    out = root / "eval"
    assert main(["pixiv", "eval", "--config", str(config), "--out", str(out)]) == 0
    table = json.loads((out / "ablation.json").read_text(encoding="utf-8"))
    return {"root": root, "clip": clip, "data": data, "store": store, "config": config, "table": table, "out": out}


def test_planted_relation_is_recovered_on_the_artist_split(pipeline):
    t = pipeline["table"]
    baseline = t["artist.metadata-baseline.spearman"]
    rhos = [t[f"artist.{model}.spearman"] for model in MODELS]  # means over the seeds
    assert min(rhos) > 0.25, rhos  # every model finds it on works of artists it never saw
    assert np.mean(rhos) > baseline + 0.15, (rhos, baseline)  # the image adds to what metadata tells
    assert t["artist.artists_on_both_sides"] == 0
    assert t["time.artists_on_both_sides"] > 0  # a time split does not group artists; it is reported
    for key in ("pearson", "mae", "top10_precision", "spearman_general", "spearman_human", "n_ai"):
        assert f"artist.popularity-multitask.{key}" in t


def test_the_ungrouped_split_leaks_and_grouping_removes_it(pipeline):
    t = pipeline["table"]
    assert t["random.artists_on_both_sides"] > 0
    grouped = np.mean([t[f"artist.{m}.spearman"] for m in MODELS])
    ungrouped = np.mean([t[f"random.{m}.spearman"] for m in MODELS])
    assert ungrouped > grouped + 0.1, (ungrouped, grouped)


def test_ablation_files(pipeline):
    from PIL import Image

    out = pipeline["out"]
    for name in ("ablation.png", "reliability.png"):
        with Image.open(out / name) as im:
            assert im.width > 400 and im.height > 400
    assert all("." in k for k in pipeline["table"]
               if k not in ("works", "target", "seeds", "losses", "bootstrap", "per_artist", "models"))
    assert main(["pixiv", "eval", "--config", str(pipeline["config"]), "--out", str(out)]) == 2  # never overwrites


def test_uncertainty_weights_reach_their_balance_points(pipeline):
    t = pipeline["table"]
    for split in ("artist", "time", "random"):
        for model in ("popularity-multitask", "popularity-attention"):
            for task in ("popularity", "sanity"):
                z, balance = t[f"{split}.{model}.log_var.{task}"], t[f"{split}.{model}.balance.{task}"]
                assert abs(z - balance) < 0.5, (split, model, task, z, balance)
            assert t[f"{split}.{model}.log_var.popularity"] < -2  # the MSE is small: far from the start at 0
            # the synthetic AI flag becomes almost perfectly predicted (CE -> 1e-5): its balance point runs off
            # towards -inf, and z follows at the pace its learning rate allows
            assert t[f"{split}.{model}.log_var.ai"] < -3


def test_eval_has_baselines_intervals_and_says_what_is_noise(pipeline):
    from cityclf_core.pixiv.ablation import format_table

    t = pipeline["table"]
    assert t["models"] == [*MODELS, "ridge-probe", "metadata-baseline"]
    assert t["artist.ridge-probe.spearman"] > 0.25  # the planted relation is linear enough for a probe
    for model in t["models"]:
        lo, hi = t[f"artist.{model}.spearman.ci"]
        assert lo < t[f"artist.{model}.spearman"] < hi and hi - lo > 0.02
        for key in ("spearman_within_artist", "spearman_between_artist", "top10_precision_general"):
            assert f"artist.{model}.{key}" in t
    key = "artist.diff.popularity.vs.metadata-baseline"
    assert t[key] > 0 and t[key + ".ci"][0] > 0 and t[key + ".within_noise"] is False  # the image adds, clearly
    assert isinstance(t["artist.diff.popularity.vs.popularity-multitask.within_noise"], bool)
    rows = t["artist.popularity.reliability"]
    assert 3 <= len(rows) <= 10 and all(0 <= p <= 100 and 0 <= a <= 100 for p, a, _ in rows)
    text = format_table(t)
    assert "| artist | ridge-probe |" in text and "Paired differences" in text
    assert text == format_table(json.loads(json.dumps(t)))  # from ablation.json alone


@pytest.fixture(scope="module")
def trained(pipeline):
    out = pipeline["root"] / "models"
    assert main(["pixiv", "train", "--config", str(pipeline["config"]), "--out", str(out), "--no-progress"]) == 0
    return out / "PixivPop-v1.safetensors"


def test_eval_of_a_head_refuses_works_it_trained_on(pipeline, trained, capsys, tmp_path):
    sidecar = json.loads(trained.with_name("PixivPop-v1.config.json").read_text(encoding="utf-8"))
    split = sidecar["split"]
    settings = load_settings(pipeline["config"])
    rec, _ = load_records(settings.dataset)
    test = make_split("artist", rec, settings.test_fraction, settings.val_fraction, seed=0).test
    assert split["test_ids"] == sorted(rec.illust_id[test].tolist()) and len(split["test_ids_sha256"]) == 64
    assert (split["name"], split["seed"], split["test_fraction"]) == ("artist", 0, 0.3)
    capsys.readouterr()
    assert main(["pixiv", "eval", "--config", str(pipeline["config"]), "--head", str(trained), "--out",
                 str(tmp_path)]) == 0
    assert "Spearman" in capsys.readouterr().out and (tmp_path / "PixivPop-v1.eval.json").is_file()
    data = yaml.safe_load(pipeline["config"].read_text(encoding="utf-8"))
    data["data"]["split"] = "random"  # another split: its test works include the head's training works
    other = pipeline["root"] / "other.yaml"
    other.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["pixiv", "eval", "--config", str(other), "--head", str(trained), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "it may have trained on them" in err and "data.split: artist" in err


def test_train_saves_a_head_that_scores_like_any_other(pipeline, trained, capsys):
    root = pipeline["root"]
    out = root / "models"
    weights = trained
    sidecar = json.loads((out / "PixivPop-v1.config.json").read_text(encoding="utf-8"))
    assert sidecar["arch"] == "popularity-multitask"
    assert sidecar["output_names"] == ["popularity", "sanity:general", "sanity:sensitive", "sanity:explicit",
                                       "ai:human", "ai:ai"]
    assert sidecar["clip"]["embed_dim"] == 768 and sidecar["crop_policy"] == "whole"
    # the scalers are the training split's: refitting on train gives them, the test split would give others
    settings = load_settings(pipeline["config"])
    rec, _ = load_records(settings.dataset)
    split = make_split("artist", rec, settings.test_fraction, settings.val_fraction, seed=0)
    train_fit = Target.fit("weighted_log", rec.subset(split.train)).to_dict()
    assert sidecar["target"]["scalers"] == train_fit["scalers"]
    assert sidecar["target"]["n_fit"] == len(split.train) == sidecar["split"]["train"]
    assert sidecar["target"]["scalers"] != Target.fit("weighted_log", rec.subset(split.test)).to_dict()["scalers"]
    q = sidecar["quantiles"]  # the training works' scores at each percentile: what the label shows
    assert len(q) == 101 and q == sorted(q) and q[0] < q[-1]

    head = cityclf_core.load_head(weights)
    assert head.kind.name == "popularity-multitask" and head.labels[0] == "popularity"
    capsys.readouterr()
    images = sorted(pipeline["data"].glob("*/*_p0.png"))[:5]
    assert main(["score", *map(str, images), "--model", str(weights), "--clip", str(pipeline["clip"]),
                 "--format", "jsonl", "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert 0.0 <= row["score"] <= 1.0 and 0.0 <= row["percentile"] <= 100.0
        assert row["label"] == f"{int(round(row['percentile']))}/100"  # above that share of the training works
        probs = row["probs"]
        assert set(probs) == {"sanity:general", "sanity:sensitive", "sanity:explicit", "ai:human", "ai:ai"}
        assert sum(probs[k] for k in probs if k.startswith("sanity:")) == pytest.approx(1.0, abs=1e-5)
        assert probs["ai:human"] + probs["ai:ai"] == pytest.approx(1.0, abs=1e-5)


def test_score_then_query_from_the_store(pipeline, capsys):
    weights = pipeline["root"] / "eval" / "runs" / "artist-s0" / "popularity-v1.safetensors"
    store = pipeline["store"]
    assert main(["score", "--store", str(store), "--model", str(weights), "--clip", str(pipeline["clip"]),
                 "--format", "csv", "--no-progress", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "path,popularity-v1:label,popularity-v1:score,popularity-v1:percentile"
    assert len(lines) == 4
    scores = [float(line.split(",")[2]) for line in lines[1:]]
    assert scores == sorted(scores, reverse=True)
    db = sqlite3.connect(store)
    kinds = {r[0] for r in db.execute("SELECT kind FROM scores")}
    db.close()
    assert kinds == {"popularity"}
    assert main(["query", "--store", str(store), "--format", "jsonl", "--top", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["label"].endswith("/100") for r in rows)


def test_comfyui_predict_then_sort_keeps_the_most_popular(pipeline, pack, monkeypatch):
    from importlib import import_module

    from PIL import Image

    monkeypatch.setenv("CITYCLF_MODELS", str(pipeline["root"] / "eval" / "runs" / "artist-s0"))
    nodes = import_module("cityclf_pack.nodes")
    model = nodes.CityClfLoader().load(head="popularity-attention-v1.safetensors",
                                       clip=str(pipeline["clip"]))["result"][0]
    paths = sorted(pipeline["data"].glob("*/*_p0.png"))[:6]
    batch = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).float() / 255 for p in paths])
    scores, labels, _ = nodes.CityClfPredict().predict(model=[model], images=[batch], tiling=["auto"],
                                                       combine=["mean"], never_upscale=[False])["result"]
    assert all(label.endswith("/100") for label in labels)
    kept = nodes.CityClfSort().sort(images=[batch], scores=scores, order=["best first"], top_k=[2])["result"]
    order = json.loads(kept[4])
    assert order == sorted(range(6), key=lambda i: -scores[i])[:2]
