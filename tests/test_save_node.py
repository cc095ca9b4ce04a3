"""CityClassifier Save Image (with scores): PNGs with the workflow and every head's scores inside, read back
with Pillow; names with zero-padded scores; confined to the output folder."""

from __future__ import annotations

import json
from importlib import import_module

import numpy as np
import pytest
import torch
from conftest import as_image_tensor, illustration
from PIL import Image


@pytest.fixture
def nodes(pack, model_dir, monkeypatch, score_head_path, class_head_path, tmp_path):
    monkeypatch.setenv("CITYCLF_MODELS", str(model_dir))
    bridge = import_module("cityclf_pack.nodes.comfy_bridge")
    (tmp_path / "output").mkdir()
    monkeypatch.setattr(bridge, "output_dir", lambda: str(tmp_path / "output"))
    return import_module("cityclf_pack.nodes")


@pytest.fixture
def scored(nodes, tiny_clip_dir):
    loader = nodes.CityClfLoader()
    first = loader.load(head="TestAesthetics-v1.safetensors", clip=str(tiny_clip_dir))["result"][0]
    model = loader.load(head="TestCompression-v1.safetensors", clip=str(tiny_clip_dir), add_to=first)["result"][0]
    batch = as_image_tensor(*[illustration(96, 80, s) for s in range(3)])
    out = nodes.CityClfPredict().predict(model=[model], images=[batch], tiling=["auto"], combine=["mean"],
                                         never_upscale=[False])
    return model, batch, out["result"]


def test_saved_pngs_carry_every_value(nodes, scored, tmp_path):
    from cityclf_core.loading.weights import file_sha256

    model, batch, (scores, labels, payloads) = scored
    prompt = {"1": {"class_type": "CityClfPredict", "inputs": {}}}
    workflow = {"nodes": [{"id": 1, "type": "CityClfPredict"}], "links": []}
    out = nodes.CityClfSave().save(images=[batch], json=payloads, filename_prefix=["scored/%score%_%label%_%head%"],
                                   prompt=[prompt], extra_pnginfo=[{"workflow": workflow}])
    paths = out["result"][0]
    assert len(paths) == 3 and [e["type"] for e in out["ui"]["images"]] == ["output"] * 3
    for i, path in enumerate(paths):
        name = path.rsplit("/", 1)[1]
        assert name.startswith(f"{round(scores[i] * 1000):03d}_{labels[i].replace('%', '')}_TestAesthetics-v1_")
        assert out["ui"]["images"][i] == {"filename": name, "subfolder": "scored", "type": "output"}
        with Image.open(path) as im:
            im.load()
            info = dict(im.info)
            pixels = np.asarray(im)
        assert np.array_equal(pixels, np.clip(255.0 * batch[i].numpy(), 0, 255).astype(np.uint8))
        assert json.loads(info["prompt"]) == prompt and json.loads(info["workflow"]) == workflow  # as Save Image
        record = json.loads(info["cityclf"])
        assert info["aesthetic_score"] == f"{scores[i]:.4f}" == record["aesthetic_score"]
        predicted = json.loads(payloads[i])
        assert set(record["heads"]) == set(predicted) == {"TestAesthetics-v1", "TestCompression-v1"}
        for b in model.bindings:
            entry, want = record["heads"][b.name], predicted[b.name]
            assert entry["arch"] == want["arch"] and entry["label"] == want["label"]
            assert entry["score"] == pytest.approx(want["score"], abs=1e-6)
            assert entry.get("probs", {}) == pytest.approx(want.get("probs", {}), abs=1e-6)
            assert entry["sha256"] == file_sha256(b.head.path)
            assert entry["clip"] == {"name": b.encoder.name, "identity": b.encoder.identity}
        assert set(record["heads"]["TestCompression-v1"]["probs"]) == {"Pass", "JPEG", "WEBP"}


def test_names_sort_by_score_and_files_are_never_overwritten(nodes, scored, tmp_path):
    save = import_module("cityclf_pack.nodes.save")
    assert [save.score_text(s) for s in (0.0, 0.0412, 0.873, 0.9996, 1.0, float("nan"))] == \
        ["000", "041", "873", "999", "999", "nan"]
    assert save.name_part("Chromatic Aberration") == "Chromatic_Aberration" and save.name_part("87%") == "87"
    _, batch, (_, _, payloads) = scored
    for _ in range(2):
        nodes.CityClfSave().save(images=[batch[:1]], json=payloads[:1], filename_prefix=["same"])
    names = sorted(p.name for p in (tmp_path / "output").iterdir())
    assert names == ["same_00001_.png", "same_00002_.png"]


def test_bad_input_is_refused_clearly(nodes, scored, tmp_path):
    _, batch, (_, _, payloads) = scored
    save = nodes.CityClfSave()
    with pytest.raises(Exception, match="3 image.*2 json"):
        save.save(images=[batch], json=payloads[:2], filename_prefix=["x"])
    with pytest.raises(Exception, match="not Predict's json"):
        save.save(images=[batch[:1]], json=["[1, 2]"], filename_prefix=["x"])
    with pytest.raises(Exception, match="head 'Nope'"):
        save.save(images=[batch[:1]], json=payloads[:1], filename_prefix=["x"], head=["Nope"])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "output" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(Exception, match="outside the folders"):
        save.save(images=[batch[:1]], json=payloads[:1], filename_prefix=["link/x"])
    assert not list(outside.iterdir())
    assert torch.is_tensor(batch)
