"""One CLIP resolver for every entry point, and CLIP records that travel with a trained head.

Every way in -- the library (`load_encoder`, `TransformersClipEncoder.load`, `load_scoring_model`), the
`cityclf` command (score, embed + score --store, train), the Loader node, the Ray workers -- gets the same
CLIP from one local stand-in for the hub (tests/fake_hub.py): a repo with only pytorch_model.bin, one with
model.safetensors, and one whose .bin holds a pickled callable (refused the same way everywhere).

A trained head (an image head, a popularity head) whose config named its CLIP by a relative path scores the
same from another folder, by `cityclf score` and by the Loader node in a ComfyUI-style tree, wherever its
CLIP is among the folders searched; a folder of its name with other weights is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import import_module

import pytest
import torch
from conftest import illustration
from fake_hub import FakeHub, make_repos, redirect
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.errors import WeightsError
from cityclf_core.loading.clips import TransformersClipEncoder, forget_encoders, load_encoder
from cityclf_core.loading.models import load_scoring_model

REFUSAL = "pytorch_model.bin holds more than tensors"
TRAIN_CONFIG = ("model: {base: Bright, rev: v1, arch: class}\n"
                "train: {lr: 1.0e-3, steps: 16, batch: 8, val_fraction: 0.25}\n"
                "labels:\n  0: {name: Dark, loss: 1.0}\n  1: {name: Bright, loss: 1.0}\n")


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def hub(tmp_path, tiny_clip_dir, monkeypatch):
    repos, _, marker = make_repos(tmp_path / "hub", tiny_clip_dir)
    with FakeHub(repos) as server:
        redirect(monkeypatch, server.endpoint, tmp_path / "hf-cache")
        monkeypatch.setenv("CITYCLF_CACHE", str(tmp_path / "cache"))
        forget_encoders()
        yield marker
    forget_encoders()


@pytest.fixture
def labelled(tmp_path):
    root = tmp_path / "labelled"
    for folder, bright in (("0_dark", False), ("1_bright", True)):
        (root / folder).mkdir(parents=True)
        for i in range(4):
            a = illustration(40 + 4 * i, 36, 300 + i + (50 if bright else 0))
            Image.fromarray((a // 2 + (120 if bright else 0)).astype("uint8")).save(root / folder / f"{i}.png")
    return root


@pytest.fixture
def comfy_models(tmp_path, monkeypatch, pack, score_head_path):
    """A ComfyUI-style models folder holding the score head, as the Loader node sees it."""
    heads = tmp_path / "comfy" / "models" / "cityclassifiers"
    heads.mkdir(parents=True)
    shutil.copy(score_head_path, heads / score_head_path.name)
    shutil.copy(score_head_path.with_name(score_head_path.stem + ".config.json"), heads)
    monkeypatch.setenv("CITYCLF_MODELS", str(heads))
    return heads


def views() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def node_encoder(head_name: str, clip: str):
    loader = import_module("cityclf_pack.nodes.loader")
    model = loader.CityClfLoader().load(head=head_name, clip=clip)["result"][0]
    return model.bindings[0].encoder


@pytest.mark.parametrize("repo", ["fake/bin-clip", "fake/st-clip"])
def test_every_entry_point_gets_the_same_clip_from_the_hub(repo, hub, comfy_models, labelled, score_head_path,
                                                           tmp_path, capsys):
    image = labelled / "1_bright" / "0.png"
    x = views()
    library = load_encoder(repo, allow_download=True)
    want = library.encode(x)
    forget_encoders()
    assert torch.equal(TransformersClipEncoder.load(repo, allow_download=True).encode(x), want)
    node = node_encoder(score_head_path.name, repo)
    torch.testing.assert_close(node.encode(x), want)
    assert node.identity == library.identity

    scored = load_scoring_model([score_head_path], clip=repo).score([str(image)])[0]
    by_library = scored[score_head_path.stem].score
    code, out, err = run(["score", image, "-m", score_head_path, "--clip", repo, "--format", "jsonl",
                          "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(out)["score"] == pytest.approx(by_library, abs=1e-6)
    db = tmp_path / "s.db"
    code, _, err = run(["embed", image, "--store", db, "-m", score_head_path, "--clip", repo, "--no-progress"],
                       capsys)
    assert code == 0, err
    code, out, err = run(["score", "--store", db, "-m", score_head_path, "--clip", repo, "--format", "jsonl",
                          "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(out)["score"] == pytest.approx(by_library, abs=1e-6)

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TRAIN_CONFIG)
    code, _, err = run(["train", "--config", cfg, "--data", labelled, "--out", tmp_path / "out", "--clip", repo,
                        "--no-progress"], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "Bright-v1.config.json").read_text())["clip"]
    assert record["source"] == repo and record["folder"] is None and record["identity"] == library.identity


def test_a_pickled_callable_is_refused_the_same_way_by_every_entry_point(hub, comfy_models, labelled,
                                                                         score_head_path, tmp_path, capsys):
    repo = "fake/evil-clip"
    image = labelled / "1_bright" / "0.png"
    for load in (lambda: load_encoder(repo, allow_download=True),
                 lambda: TransformersClipEncoder.load(repo, allow_download=True),
                 lambda: load_scoring_model([score_head_path], clip=repo),
                 lambda: node_encoder(score_head_path.name, repo)):
        with pytest.raises(WeightsError, match=f"{repo}: {REFUSAL}"):
            load()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TRAIN_CONFIG)
    for argv in (["score", image, "-m", score_head_path, "--clip", repo],
                 ["embed", image, "--store", tmp_path / "s.db", "-m", score_head_path, "--clip", repo],
                 ["train", "--config", cfg, "--data", labelled, "--out", tmp_path / "out", "--clip", repo]):
        code, _, err = run([*argv, "--no-progress"], capsys)
        assert code == 2 and f"{repo}: {REFUSAL}" in err, (argv, err)
    assert not hub.exists()  # the pickled code never ran


def test_only_the_resolver_downloads_clips():
    """One place fetches CLIPs from the hub: nothing else calls snapshot_download or reads HF_HUB_OFFLINE."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    callers = {}
    for top in ("cityclf_core", "nodes"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    text = open(path, encoding="utf-8").read()
                    for word in ("snapshot_download(", '"HF_HUB_OFFLINE"'):
                        if word in text:
                            callers.setdefault(word, set()).add(os.path.relpath(path, root))
    assert callers == {"snapshot_download(": {os.path.join("cityclf_core", "loading", "hub.py")},
                       '"HF_HUB_OFFLINE"': {os.path.join("cityclf_core", "loading", "hub.py")}}


# ---------------------------------------------------------------- a trained head finds its CLIP elsewhere


@pytest.fixture
def trained_elsewhere(tmp_path, labelled, tiny_clip_dir, monkeypatch, capsys):
    """A head trained in one folder (relative --clip, as the README's examples), then moved with its CLIP
    into a ComfyUI-style tree: models/cityclassifiers/HEAD and models/cityclassifiers/clip/CLIP."""
    work = tmp_path / "work"
    shutil.copytree(tiny_clip_dir, work / "models" / "my-clip")
    (work / "cfg.yaml").write_text(TRAIN_CONFIG)
    monkeypatch.chdir(work)
    code, _, err = run(["train", "--config", "cfg.yaml", "--data", labelled, "--out", "out", "--clip",
                        "models/my-clip", "--no-progress"], capsys)
    assert code == 0, err
    record = json.loads((work / "out" / "Bright-v1.config.json").read_text())["clip"]
    assert record["folder"] == "my-clip" and record["identity"]
    code, out, err = run(["score", labelled / "1_bright" / "0.png", "-m", "out/Bright-v1.safetensors",
                          "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0, err
    heads = tmp_path / "comfy" / "models" / "cityclassifiers"
    heads.mkdir(parents=True)
    for f in (work / "out").glob("Bright-v1.*"):
        shutil.copy(f, heads / f.name)
    shutil.move(str(work / "models" / "my-clip"), str(tmp_path / "parked"))  # not where it was trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    forget_encoders()
    return heads, tmp_path / "parked", json.loads(out)["probs"]


def test_a_copied_head_finds_its_clip_in_a_searched_folder(trained_elsewhere, labelled, pack, monkeypatch,
                                                            capsys):
    heads, parked, probs = trained_elsewhere
    head = heads / "Bright-v1.safetensors"
    image = labelled / "1_bright" / "0.png"
    # not found: the error names the fingerprint, the folders searched and how to pass the CLIP
    code, _, err = run(["score", image, "-m", head, "--offline", "--no-progress"], capsys)
    assert code == 2 and "fingerprint" in err and str(heads) in err and "--clip-dir" in err, err
    # in a folder given with --clip-dir, then in ComfyUI's CLIP folder: found by name and fingerprint
    code, out, err = run(["score", image, "-m", head, "--clip-dir", parked.parent, "--offline", "--format",
                          "jsonl", "--no-progress"], capsys)
    assert code == 1 or code == 2, "a folder of another name is not taken for the CLIP"
    (parked.parent / "clips").mkdir()
    shutil.move(str(parked), str(parked.parent / "clips" / "my-clip"))
    code, out, err = run(["score", image, "-m", head, "--clip-dir", parked.parent / "clips", "--offline",
                          "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(out)["probs"] == pytest.approx(probs)
    shutil.move(str(parked.parent / "clips" / "my-clip"), str(heads / "clip" / "my-clip"))
    forget_encoders()
    code, out, err = run(["score", image, "-m", head, "--offline", "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(out)["probs"] == pytest.approx(probs)
    # the Loader node with clip = auto, as ComfyUI runs it (from its own root)
    monkeypatch.setenv("CITYCLF_MODELS", str(heads))
    loader = import_module("cityclf_pack.nodes.loader")
    model = loader.CityClfLoader().load(head="Bright-v1.safetensors", clip=loader.AUTO_CLIP)["result"][0]
    assert model.bindings[0].encoder.name == "my-clip"
    result = model.score([str(image)])[0]["Bright-v1"]
    assert result.probs == pytest.approx(probs, abs=1e-5)


def test_a_folder_of_the_same_name_with_other_weights_is_not_taken(trained_elsewhere, labelled, tiny_clip_dir_b,
                                                                    capsys):
    heads, _, _ = trained_elsewhere
    shutil.copytree(tiny_clip_dir_b, heads / "clip" / "my-clip")  # the name matches, the weights do not
    code, _, err = run(["score", labelled / "1_bright" / "0.png", "-m", heads / "Bright-v1.safetensors",
                        "--offline", "--no-progress"], capsys)
    assert code == 2 and "no folder of that name with those weights" in err, err


def test_a_head_recording_an_old_style_path_still_loads(trained_elsewhere, labelled, capsys):
    heads, parked, probs = trained_elsewhere
    sidecar = heads / "Bright-v1.config.json"
    config = json.loads(sidecar.read_text())
    del config["clip"]["folder"]
    config["clip"]["source"] = str(parked)  # an absolute path, as earlier versions wrote
    sidecar.write_text(json.dumps(config))
    code, out, err = run(["score", labelled / "1_bright" / "0.png", "-m", heads / "Bright-v1.safetensors",
                          "--offline", "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(out)["probs"] == pytest.approx(probs)


# ---------------------------------------------------------------- a config naming its CLIP by a relative path


def _score_both_ways(head_path, image, heads, capsys):
    """`cityclf score` without --clip and the Loader node with clip = auto (the head found in `heads`, as
    ComfyUI's models/cityclassifiers): (what score printed, what the node gave); both must succeed."""
    forget_encoders()
    code, out, err = run(["score", image, "-m", head_path, "--offline", "--format", "jsonl", "--no-progress"],
                         capsys)
    assert code == 0, err
    loader = import_module("cityclf_pack.nodes.loader")
    forget_encoders()
    model = loader.CityClfLoader().load(head=head_path.name, clip=loader.AUTO_CLIP,
                                        download_missing=False)["result"][0]
    return json.loads(out), model.score([str(image)])[0][head_path.stem]


def _refusals(head_path, image, capsys) -> tuple[str, str]:
    """The error `cityclf score` (exit 2) and the Loader node give when the head's CLIP is not found."""
    forget_encoders()
    code, _, err = run(["score", image, "-m", head_path, "--offline", "--no-progress"], capsys)
    assert code == 2, err
    loader = import_module("cityclf_pack.nodes.loader")
    with pytest.raises(WeightsError) as node:
        loader.CityClfLoader().load(head=head_path.name, clip=loader.AUTO_CLIP, download_missing=False)
    return err, str(node.value)


@pytest.fixture
def comfy_tree(tmp_path, monkeypatch, pack):
    """A ComfyUI-style models folder (models/cityclassifiers holds the heads), the Loader's CITYCLF_MODELS."""
    heads = tmp_path / "comfy" / "models" / "cityclassifiers"
    heads.mkdir(parents=True)
    monkeypatch.setenv("CITYCLF_MODELS", str(heads))
    monkeypatch.setenv("CITYCLF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CITYCLF_CLIP_DIRS", raising=False)
    return heads


def _moves_and_refusal(head_path, image, clip, heads, capsys, first, same):
    """The CLIP moved to each searched place keeps both ways working with the same scores; a folder of its
    name with other weights is refused by both, naming the fingerprint and the folders searched."""
    identity = json.loads(head_path.with_name(head_path.stem + ".config.json").read_text())["clip"]["identity"]
    models = heads.parent
    for place in (heads / clip.name, heads / "clip" / clip.name, models / "clip_vision" / clip.name):
        place.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(clip), str(place))
        clip = place
        same(first, _score_both_ways(head_path, image, heads, capsys))
    from cityclf_core.samples import build_tiny_clip

    shutil.move(str(clip), str(heads.parent.parent / "parked"))
    build_tiny_clip(heads / "clip" / clip.name, image_size=32, patch_size=8, seed=5)  # its name, other weights
    for err in _refusals(head_path, image, capsys):
        assert identity in err and "fingerprint" in err, err
        for searched in (heads, heads / "clip", models / "clip_vision"):
            assert str(searched) in err, (searched, err)
        assert "--clip" in err


def test_an_image_head_trained_with_a_relative_model_clip_scores_from_anywhere(tmp_path, labelled, tiny_clip_dir,
                                                                                 comfy_tree, monkeypatch, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(tiny_clip_dir, a / "clips" / "my-clip")
    b.mkdir()
    (a / "cfg.yaml").write_text(TRAIN_CONFIG.replace("arch: class}", "arch: class, clip_model: clips/my-clip}"))
    monkeypatch.chdir(a)
    code, _, err = run(["train", "--config", "cfg.yaml", "--data", labelled, "--out", "out", "--no-progress"],
                       capsys)
    assert code == 0, err
    for f in (a / "out").glob("Bright-v1.*"):
        shutil.copy(f, comfy_tree / f.name)
    head = comfy_tree / "Bright-v1.safetensors"
    image = labelled / "1_bright" / "0.png"
    monkeypatch.chdir(b)  # ComfyUI runs from its own root, not the training folder

    def same(first, now):
        assert now[0]["probs"] == pytest.approx(first[0]["probs"], abs=1e-6)
        assert now[1].probs == pytest.approx(first[0]["probs"], abs=1e-5)

    first = _score_both_ways(head, image, comfy_tree, capsys)  # the CLIP where it was trained
    same(first, first)
    _moves_and_refusal(head, image, a / "clips" / "my-clip", comfy_tree, capsys, first, same)


def test_a_popularity_head_trained_with_a_relative_data_clip_scores_from_anywhere(tmp_path, tiny_clip_dir,
                                                                                   comfy_tree, monkeypatch, capsys):
    import yaml

    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(tiny_clip_dir, a / "tiny-clip")
    b.mkdir()
    monkeypatch.chdir(a)  # the docs' pixiv example: everything relative to the folder it runs in
    for argv in (["pixiv", "synth", "pixiv-data", "--works", "40", "--artists", "8", "--size", "48"],
                 ["pixiv", "ingest", "pixiv-data"],
                 ["embed", "pixiv-data", "--store", "pixiv.db", "--clip", "tiny-clip", "--no-progress"]):
        code, _, err = run(argv, capsys)
        assert code == 0, (argv, err)
    (a / "pixiv.yaml").write_text(yaml.safe_dump({
        "data": {"dataset": "pixiv-data", "store": "pixiv.db", "clip": "tiny-clip", "split": "artist",
                 "test_fraction": 0.3},
        "model": {"base": "PixivPop", "rev": "v1", "arch": "popularity", "width": 16},
        "train": {"lr": 0.002, "steps": 64, "batch": 16, "seed": 0}}))
    code, _, err = run(["pixiv", "train", "--config", "pixiv.yaml", "--out", "models", "--no-progress"], capsys)
    assert code == 0, err
    record = json.loads((a / "models" / "PixivPop-v1.config.json").read_text())["clip"]
    assert record["folder"] == "tiny-clip" and record["identity"]
    for f in (a / "models").glob("PixivPop-v1.*"):
        shutil.copy(f, comfy_tree / f.name)
    head = comfy_tree / "PixivPop-v1.safetensors"
    image = sorted((a / "pixiv-data").glob("*/*_p0.png"))[0]
    monkeypatch.chdir(b)

    def same(first, now):
        assert now[0]["score"] == pytest.approx(first[0]["score"], abs=1e-6)
        assert now[1].score == pytest.approx(first[0]["score"], abs=1e-5)

    first = _score_both_ways(head, image, comfy_tree, capsys)
    same(first, first)
    _moves_and_refusal(head, image, a / "tiny-clip", comfy_tree, capsys, first, same)


# ---------------------------------------------------------------- the Ray workers


def test_ray_workers_get_the_same_clip_from_the_hub(hub, labelled, tmp_path, capsys):
    """`cityclf embed --engine ray` (its own local Ray, in a child process pointed at the fake hub) embeds a
    .bin-only repo's CLIP as the local engine does: the workers resolve it through the same resolver."""
    pytest.importorskip("ray.data")
    import subprocess
    import sys

    import numpy as np
    from conftest import ROOT

    repo, images = "fake/bin-clip", labelled / "1_bright"
    code, _, err = run(["embed", images, "--store", tmp_path / "local.db", "--clip", repo, "--no-progress"], capsys)
    assert code == 0, err
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf-home"),  # nothing fetched or
           "HF_HUB_CACHE": str(tmp_path / "ray-hf-cache"), "CITYCLF_CACHE": str(tmp_path / "ray-cache")}  # converted
    out = subprocess.run([sys.executable, "-m", "cityclf_core", "embed", str(images), "--store",
                          str(tmp_path / "ray.db"), "--clip", repo, "--engine", "ray", "--no-progress"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert any((tmp_path / "ray-hf-cache").rglob("pytorch_model.bin")) and (tmp_path / "ray-cache" / "clip").is_dir()
    exported = {}
    for name in ("local", "ray"):
        code, _, err = run(["export", "--store", tmp_path / f"{name}.db", "--out", tmp_path / f"{name}.npz",
                            "--policy", "whole"], capsys)
        assert code == 0, err
        exported[name] = np.load(tmp_path / f"{name}.npz")
    a, b = exported["local"], exported["ray"]
    assert list(a["paths"]) == list(b["paths"]) and len(a["paths"]) == 4
    assert str(a["clip_identity"]) == str(b["clip_identity"])
    np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=1e-5, atol=1e-6)
