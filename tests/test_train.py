"""Training: reference configs, data layouts, correct losses, splits, reproducibility, resume, outputs, proof it learns."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from conftest import illustration
from PIL import Image
from safetensors.torch import load_file

from cityclf_core import ConfigError, load_head
from cityclf_core.errors import Interrupted
from cityclf_core.cli import main
from cityclf_core.store import EmbeddingStore
from cityclf_core.synth import shift_channels, synthesize
from cityclf_core.train import (
    Example,
    class_metrics,
    load_config,
    load_image_dataset,
    load_npy_dataset,
    parse_config,
    spearman,
    stratified_split,
    train,
)

REFERENCE_CONFIGS = {
    "CityAesthetics-v1.yaml": """model:
  # Name / revision to save model as
  base: "CityAesthetics-Anime"
  rev:  "v1.8"
  # Model architecture. 'score' or 'class'
  arch: score
  clip: CLIP

train:
  lr:    7e-6     # init. learning rate
  steps: 100000   # no. of training steps
  batch: 1        # training batch size
  cosine: True    # Use cosine scheduler
""",
    "CCAnime-ChromaticAberration-v1.yaml": """model:
  base: "CCAnime-ChromaticAberration"
  rev:  "v1.16"
  arch: class
  clip: CLIP

train:
  lr:    1.5e-6
  steps: 30000
  batch: 1
  cosine: True

labels:
  0:
    name: "Pass"
    loss: 1.0
  1:
    name: "Chromatic Aberration"
    loss: 0.5
""",
    "CCAnime-Compression-v1.yaml": """model:
  base: "CCAnime-Compression"
  rev:  "v1.5"
  arch: class
  clip: CLIP

train:
  lr:    2.7e-6   # init. learning rate
  steps: 40000    # no. of training steps
  batch: 1        # training batch size
  cosine: True    # Use cosine scheduler

labels:
  0:
    name: "Pass"
    loss: 1.0
  1:
    name: "JPEG"
    loss: 0.85
  2:
    name: "WEBP"
    loss: 0.65
""",
}


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_reference_configs_load_unchanged(tmp_path, name):
    path = tmp_path / name
    path.write_text(REFERENCE_CONFIGS[name])
    cfg = load_config(path)
    assert cfg.batch == 1 and cfg.cosine
    if "Compression" in name:
        assert cfg.name == "CCAnime-Compression-v1.5" and cfg.lr == 2.7e-6 and cfg.steps == 40000
        assert cfg.labels == {0: ("Pass", 1.0), 1: ("JPEG", 0.85), 2: ("WEBP", 0.65)}
        assert cfg.head_config().to_json_dict()["labels"] == {"0": "Pass", "1": "JPEG", "2": "WEBP"}
    if "Aesthetics" in name:
        assert cfg.arch == "score" and cfg.outputs == 1 and cfg.lr == 7e-6


@pytest.mark.parametrize("extra, message", [
    ({"train": {"lr": 1e-5, "momentum": 0.9}}, "unknown key.*train.momentum"),
    ({"optimizer": {}}, "unknown section"),
    ({"model": {"base": "x", "arch": "regression"}},
     "arch must be 'score', 'class', 'laion-aesthetic' or 'waifu-scorer'"),
    ({"model": {"base": "x", "arch": "score"}, "labels": {0: {"name": "a"}, 1: {"name": "b"}}}, "score model has no labels"),
    ({"model": {"base": "x", "arch": "class"}, "labels": {0: {"name": "a"}, 2: {"name": "c"}}}, "without gaps"),
    ({"model": {"base": "x", "arch": "class"}, "train": {"steps": 10, "batch": 32}}, "larger than train.steps"),
    ({"model": {"base": "x", "arch": "class"}, "train": {"warmup": 500, "steps": 100}}, "warmup"),
    ({"model": {"base": "x", "arch": "class"}, "train": {"lr": "fast"}}, "must be a number"),
    ({"model": {"base": "x", "arch": "class", "clip": "ViT-B"}}, "CLIP or META"),
    ({"model": {"base": "x", "arch": "class"}, "train": {"loss": "l1"}}, "cross-entropy"),
    ({"model": {"base": "x", "arch": "class"}, "labels": {0: {"name": "a", "weight": 2}}}, "takes 'name' and 'loss'"),
])
def test_unknown_or_contradictory_keys_are_clear_errors(extra, message):
    data = {"model": {"base": "x", "rev": "v1", "arch": "class"}}
    data.update(extra)
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_our_keys_are_accepted():
    cfg = parse_config({"model": {"base": "x", "arch": "score", "clip_model": "some/clip"},
                        "train": {"lr": 1e-4, "steps": 100, "batch": 8, "val_fraction": 0.25, "seed": 3,
                                  "warmup": 16, "early_stopping": 4, "loss": "huber", "device": "cpu"},
                        "data": {"random_crops": False, "crops_per_image": 2}})
    assert (cfg.val_fraction, cfg.seed, cfg.warmup, cfg.loss, cfg.optimizer_steps) == (0.25, 3, 16, "huber", 12)


# ---------------------------------------------------------------- data


def tinted(w, h, seed, warm: bool) -> np.ndarray:
    img = illustration(w, h, seed).astype(np.float32)
    img[..., 0 if warm else 2] = img[..., 0 if warm else 2] * 0.5 + 127
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    """A task whose answer is knowable: warm-tinted pictures are class 1, cool-tinted class 0."""
    root = tmp_path_factory.mktemp("colour")
    for folder, warm in (("0_cool", False), ("1_warm", True)):
        (root / folder).mkdir()
        for i in range(30):
            w, h = (96, 80) if i % 2 else (140, 110)
            Image.fromarray(tinted(w, h, 500 + i + (100 if warm else 0), warm)).save(root / folder / f"{i}.png")
    return root


def config(**train):
    base = {"model": {"base": "Colour", "rev": "v1", "arch": "class"},
            "train": {"lr": 1e-3, "steps": 3200, "batch": 32, "val_fraction": 0.3, "seed": 0, **train},
            "labels": {0: {"name": "Cool", "loss": 1.0}, 1: {"name": "Warm", "loss": 1.0}}}
    return parse_config(base)


@pytest.fixture(scope="module")
def colour_dataset(colour_data, encoder, tmp_path_factory):
    encoder.source = "tiny"
    with EmbeddingStore(tmp_path_factory.mktemp("st") / "s.db") as store:
        return load_image_dataset(config(), colour_data, store, encoder)


def test_image_data_goes_through_the_store_once(colour_data, encoder, tmp_path):
    encoder.source = "tiny"
    reports = []
    with EmbeddingStore(tmp_path / "s.db") as store:
        d = load_image_dataset(config(), colour_data, store, encoder, report=reports)
        assert sum(r.embedded for r in reports) == 60
        again = []
        load_image_dataset(config(), colour_data, store, encoder, report=again)
        assert sum(r.embedded for r in again) == 0  # a second run embeds nothing
    assert d.n_train == 42 and len(d.val_counts) == 18
    # class mode: random tile crops for training (4 per image large enough, T = 64), 5 tiles for validation
    counts = (d.train_offsets[1:] - d.train_offsets[:-1]).tolist()
    assert set(counts) == {4}
    assert set(d.val_counts) == {5}


def test_split_is_stratified_and_seeded():
    ex = [Example(f"a{i}", 0, "0_a") for i in range(40)] + [Example(f"b{i}", 1, "1_b") for i in range(10)]
    tr, va = stratified_split(ex, 0.2, seed=1)
    assert sum(1 for i in va if ex[i].target == 0) == 8 and sum(1 for i in va if ex[i].target == 1) == 2
    assert stratified_split(ex, 0.2, seed=1) == (tr, va) and stratified_split(ex, 0.2, seed=2) != (tr, va)
    assert not set(tr) & set(va)


def test_npy_folders_in_the_reference_layout(tmp_path):
    root = tmp_path / "data" / "CLIP"
    rng = np.random.default_rng(0)
    for score in range(0, 11, 2):
        (root / f"{score:02d}").mkdir(parents=True)
        for i in range(6):
            np.save(root / f"{score:02d}" / f"{i:06d}.npy", rng.standard_normal((1, 768)).astype(np.float32))
    cfg = parse_config({"model": {"base": "S", "arch": "score"}, "train": {"steps": 64, "batch": 8}})
    d = load_npy_dataset(cfg, root)
    assert d.train_views.shape[1] == 768 and d.n_train + len(d.val_counts) == 36
    assert float(d.train_targets.min()) == 0.0 and float(d.train_targets.max()) == 1.0  # 0..10 -> 0..1
    np.save(root / "00" / "bad.npy", np.zeros((1, 512), np.float32))
    with pytest.raises(ConfigError, match="expected a 768-d embedding"):
        load_npy_dataset(cfg, root)


def test_layout_errors(tmp_path):
    from cityclf_core.train import scan_folders

    (tmp_path / "0_a").mkdir()
    (tmp_path / "2_c").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "0_a" / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "2_c" / "y.png")
    with pytest.raises(ConfigError, match="0..K-1 without gaps"):
        scan_folders(tmp_path, "class", "images")
    (tmp_path / "misc").mkdir()
    with pytest.raises(ConfigError, match="must start with their class number"):
        scan_folders(tmp_path, "class", "images")


# ---------------------------------------------------------------- training


def test_proof_it_learns_a_knowable_class_task(colour_dataset, tmp_path):
    result = train(config(), colour_dataset, tmp_path, log=lambda *a: None)
    m = result.metrics
    assert m["accuracy"] >= 0.9 and m["chance_accuracy"] == 0.5 and m["f1_macro"] >= 0.9
    assert m["confusion_matrix"][0][0] + m["confusion_matrix"][1][1] == round(m["accuracy"] * m["n_val"])


def test_proof_it_learns_a_knowable_score_task(encoder, tmp_path):
    root = tmp_path / "scores"
    for level in range(0, 11, 2):  # brightness 0..10 -> the score
        (root / str(level)).mkdir(parents=True)
        for i in range(8):
            img = illustration(90, 70, 40 * level + i).astype(np.float32) * (0.25 + 0.075 * level)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / str(level) / f"{i}.png")
    cfg = parse_config({"model": {"base": "Bright", "rev": "v1", "arch": "score"},
                        "train": {"lr": 1e-3, "steps": 4000, "batch": 16, "val_fraction": 0.25}})
    encoder.source = "tiny"
    with EmbeddingStore(tmp_path / "s.db") as store:
        data = load_image_dataset(cfg, root, store, encoder)
    m = train(cfg, data, tmp_path / "out", log=lambda *a: None).metrics
    assert m["spearman"] >= 0.8 and m["mae"] < 0.2 and m["score_range"] == [0.0, 10.0]


def test_weighted_cross_entropy_is_on_logits(colour_dataset):
    from cityclf_core.kinds.released import HeadNet

    torch.manual_seed(0)
    net = HeadNet(768, 1024, 2)
    x, y = colour_dataset.train_views[:8], torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    w = torch.tensor([1.0, 0.5])
    z = net.logits(x)
    ours = torch.nn.CrossEntropyLoss(weight=w)(z, y)
    by_hand = -(w[y] * torch.log_softmax(z, 1).gather(1, y[:, None])[:, 0]).sum() / w[y].sum()
    assert torch.allclose(ours, by_hand)
    buggy = torch.nn.CrossEntropyLoss(weight=w)(torch.softmax(z, 1), y)  # the reference's mistake
    assert not torch.allclose(ours, buggy)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_any_batch_size_trains(colour_dataset, tmp_path, batch):
    cfg = config(batch=batch, steps=batch * 40, lr=5e-4)
    m = train(cfg, colour_dataset, tmp_path, log=lambda *a: None).metrics
    assert m["steps"] == 40 and m["samples"] == batch * 40


def test_seeded_runs_are_reproducible(colour_dataset, tmp_path):
    a = train(config(steps=640), colour_dataset, tmp_path / "a", log=lambda *a: None)
    b = train(config(steps=640), colour_dataset, tmp_path / "b", log=lambda *a: None)
    c = train(config(steps=640, seed=5), colour_dataset, tmp_path / "c", log=lambda *a: None)
    assert a.weights.read_bytes() == b.weights.read_bytes()
    assert a.weights.read_bytes() != c.weights.read_bytes()


def test_resume_after_an_interruption_gives_the_same_head(colour_dataset, tmp_path):
    cfg = config(steps=1600, eval_every=10)
    whole = train(cfg, colour_dataset, tmp_path / "whole", log=lambda *a: None)

    def stop_at_23(step, total):
        if step == 23:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the loop stops after this step, with a checkpoint

    out = tmp_path / "parts"
    with pytest.raises(Interrupted, match="at step 23 of 50.*--resume"):
        train(cfg, colour_dataset, out, log=lambda *a: None, progress=stop_at_23)
    ckpt = out / "Colour-v1.checkpoint.safetensors"
    assert ckpt.is_file() and not (out / "Colour-v1.safetensors").exists()
    resumed = train(cfg, colour_dataset, out, resume=ckpt, log=lambda *a: None)
    assert resumed.steps_done == 50
    assert resumed.weights.read_bytes() == whole.weights.read_bytes()
    assert not ckpt.exists()  # finished runs clean up their checkpoint
    with pytest.raises(ConfigError, match="already exists"):
        train(cfg, colour_dataset, out, log=lambda *a: None)


def test_outputs_are_in_the_released_format(colour_dataset, tmp_path, tiny_clip_dir, colour_data, capsys):
    result = train(config(steps=320), colour_dataset, tmp_path, log=lambda *a: None)
    assert os.path.getsize(result.weights) == 16_312_728
    assert len(load_file(str(result.weights))) == 16
    cfg = json.loads(result.config.read_text())
    assert list(cfg) == ["name", "rev", "arch", "labels", "model_params"]
    assert cfg["labels"] == {"0": "Cool", "1": "Warm"} and cfg["model_params"]["outputs"] == 2
    metrics = json.loads(result.metrics_path.read_text())
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "precision_warm", "recall_cool",
                "confusion_matrix", "val_loss", "n_val"):
        assert key in metrics
    lines = result.log.read_text().splitlines()
    assert lines[0] == "step,samples,lr,train_loss,val_loss,val_metric" and len(lines) > 2
    png = Image.open(result.curves)
    assert png.width > 500 and np.asarray(png).std() > 5
    head = load_head(result.weights)  # loads at once, as a head of ours
    assert head.labels == ["Cool", "Warm"]
    code = main(["score", str(colour_data / "1_warm"), "-m", str(result.weights), "--clip", str(tiny_clip_dir),
                 "--format", "jsonl", "--no-progress"])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(rows) == 30 and all(set(r["probs"]) == {"Cool", "Warm"} for r in rows)


def test_metrics_helpers():
    m = class_metrics(np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 0]), ["Pass", "JPEG", "WEBP"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    assert m["precision_webp"] == pytest.approx(2 / 3) and m["recall_webp"] == pytest.approx(2 / 3)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])) == pytest.approx(-1.0)


# ---------------------------------------------------------------- the command line, review, synth


def test_train_command_end_to_end(colour_data, tiny_clip_dir, tmp_path, capsys):
    cfg = tmp_path / "colour.yaml"
    cfg.write_text("""model: {base: Colour, rev: v2, arch: class, clip: CLIP}
train: {lr: 1.0e-3, steps: 3200, batch: 32, cosine: True, val_fraction: 0.3}
labels:
  0: {name: Cool, loss: 1.0}
  1: {name: Warm, loss: 1.0}
""")
    code = main(["train", "--config", str(cfg), "--data", str(colour_data), "--out", str(tmp_path / "m"),
                 "--clip", str(tiny_clip_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "accuracy" in out and "confusion matrix" in out
    assert (tmp_path / "m" / "Colour-v2.safetensors").is_file()
    assert (tmp_path / "m" / "Colour.embeddings.db").is_file()
    code = main(["train", "--config", str(cfg), "--data", str(colour_data), "--out", str(tmp_path / "m"),
                 "--clip", str(tiny_clip_dir), "--no-progress"])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_review_lists_confidently_wrong_images_first(colour_data, colour_dataset, tiny_clip_dir, tmp_path, capsys):
    result = train(config(), colour_dataset, tmp_path / "m", log=lambda *a: None)
    mixed = tmp_path / "review"
    for folder in ("0_cool", "1_warm"):
        (mixed / folder).mkdir(parents=True)
        for f in sorted((colour_data / folder).iterdir())[:6]:
            (mixed / folder / f.name).write_bytes(f.read_bytes())
    # two mislabelled images: warm ones filed as cool
    misfiled = sorted((colour_data / "1_warm").iterdir())[6:8]
    for f in misfiled:
        (mixed / "0_cool" / f"misfiled_{f.name}").write_bytes(f.read_bytes())
    sheet = tmp_path / "wrong.png"
    code = main(["review", str(mixed), "-m", str(result.weights), "--clip", str(tiny_clip_dir), "--format", "jsonl",
                 "--sheet", str(sheet), "--no-progress"])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 0 and sheet.is_file()
    assert {os.path.basename(r["path"]) for r in rows[:2]} == {f"misfiled_{f.name}" for f in misfiled}
    assert all(r["expected"] == "Cool" and r["predicted"] == "Warm" for r in rows[:2])
    assert rows[0]["loss"] >= rows[-1]["loss"] and rows[0]["kind"] == "false positive"
    code = main(["review", str(colour_data / "1_warm"), "-m", str(result.weights), "--clip", str(tiny_clip_dir),
                 "--expect", "Cool", "--format", "csv", "--top", "5", "--no-progress"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0].startswith("path,expected,predicted") and len(lines) == 6


def test_synth_makes_the_class_layout_and_never_overwrites(tmp_path):
    clean = tmp_path / "clean"
    (clean / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(illustration(64, 48, i)).save((clean / "sub" if i else clean) / f"c{i}.png")
    out = tmp_path / "data"
    rep = synthesize(clean, out, "compression", seed=1)
    assert rep.written == {"0_clean": 3, "1_jpeg": 3, "2_webp": 3}
    names = sorted(p.name for p in (out / "1_jpeg").iterdir())
    assert all(n.endswith(".jpg") and "_q" in n for n in names) and "sub__c1_q" in " ".join(names)
    assert Image.open(next((out / "2_webp").iterdir())).format == "WEBP"
    victim = out / "0_clean" / "c0.png"
    victim.write_bytes(b"user edit")
    again = synthesize(clean, out, "compression", seed=1)
    assert again.written == {} and again.existing == 9 and victim.read_bytes() == b"user edit"
    assert (out / "config.yaml").is_file() and load_config(out / "config.yaml").labels[1][0] == "JPEG"
    ca = synthesize(clean, tmp_path / "ca", "chromatic-aberration", seed=0, shift=(2, 2))
    assert ca.written == {"0_clean": 3, "1_chroma": 3}
    with pytest.raises(ConfigError, match="must not be the clean folder"):
        synthesize(clean, clean, "compression")


def test_shift_channels_moves_red_and_blue_apart():
    rgb = np.zeros((5, 9, 3), np.uint8)
    rgb[:, 4] = 255  # a white vertical line
    out = shift_channels(rgb, 2, 0)
    assert out[0, 6, 0] == 255 and out[0, 4, 0] == 0  # red moved right by 2
    assert out[0, 2, 2] == 255 and out[0, 4, 2] == 0  # blue moved left by 2
    assert out[0, 4, 1] == 255  # green stays
    assert (shift_channels(rgb, 0, 0) == rgb).all()


def test_training_leaves_the_callers_config_unchanged(colour_dataset, tmp_path):
    cfg = parse_config({"model": {"base": "NoLabels", "rev": "v0", "arch": "class"},
                        "train": {"lr": 1e-4, "steps": 64, "batch": 8}})
    assert cfg.labels == {}
    before = repr(cfg)
    result = train(cfg, colour_dataset, tmp_path, log=lambda *a: None)
    assert repr(cfg) == before  # the labels the data filled in went into the run's own copy
    assert load_head(result.weights).labels == ["0", "1"]


# ---------------------------------------------------------------- the CLIP a run embeds with, and its store


def config_dict() -> dict:
    return {"train": {"steps": 8, "batch": 4, "val_fraction": 0.3, "seed": 0},
            "labels": {0: {"name": "Cool", "loss": 1.0}, 1: {"name": "Warm", "loss": 1.0}}}


def test_training_clip_is_the_option_else_the_config_else_the_reference():
    from cityclf_core.train.embedding import training_clip

    cfg = config()
    assert training_clip(cfg) == "openai/clip-vit-large-patch14-336"
    cfg.clip_model = "clips/mine"
    assert training_clip(cfg) == "clips/mine" and training_clip(cfg, "other/clip") == "other/clip"
    meta = parse_config({**config_dict(), "model": {"base": "M", "arch": "class", "clip": "META"}})
    with pytest.raises(ConfigError, match="model.clip META has no CLIP to embed images with"):
        training_clip(meta)


def test_embed_training_images_once_through_a_locked_store(tiny_clip_dir, tmp_path, monkeypatch):
    from cityclf_core.errors import StoreError
    from cityclf_core.store.lock import store_writer
    from cityclf_core.train.embedding import embed_training_images, load_training_clip

    data = tmp_path / "data"
    for folder, warm in (("0_cool", False), ("1_warm", True)):
        (data / folder).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(tinted(60, 50, 700 + i + 10 * warm, warm)).save(data / folder / f"{i}.png")
    cfg = config()
    encoder = load_training_clip(cfg, tiny_clip_dir, "cpu", "fp32")
    assert cfg.clip_record["folder"] == tiny_clip_dir.name and cfg.clip_record["identity"] == encoder.identity
    out = tmp_path / "out"  # made for the default store, OUT/<base>.embeddings.db
    totals, told = [], []
    first = embed_training_images(cfg, data, encoder, out, on_total=totals.append,
                                  on_file=lambda p, e: told.append(e))
    assert first.store == out / "Colour.embeddings.db" and first.store.is_file()
    assert (first.embedded, first.reused, totals, told) == (6, 0, [6], [None] * 6)
    assert first.data.n_train + len(first.data.val_counts) == 6
    again = embed_training_images(cfg, data, encoder, out)
    assert (again.embedded, again.reused) == (0, 6)  # each image embedded once
    monkeypatch.setenv("CITYCLF_LOCK_WAIT", "0")
    with store_writer(first.store):  # another writer holds the store: refused, nothing done
        with pytest.raises(StoreError, match="is in use"):
            embed_training_images(cfg, data, encoder, out)

    def ctrl_c(path, error):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="keeps the embeddings made so far: rerun to continue"):
        embed_training_images(cfg, data, encoder, out, store=tmp_path / "other.db", on_file=ctrl_c)
