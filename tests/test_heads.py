"""Heads: the released layout, outputs, configs, the catalogue, downloads, and bad weight files."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cityclf_core import DownloadError, HeadConfig, HeadNet, WeightsError, load_head, resolve_head, save_head
from cityclf_core.kinds.released import STATE_DICT_KEYS
from cityclf_core.loading import catalogue
from cityclf_core.samples import build_head, random_head
from cityclf_core.scoring.heads import default_policy

RELEASED_SIZES = {1: 16_312_596, 2: 16_312_728, 3: 16_312_860}


@pytest.mark.parametrize("outputs", [1, 2, 3])
def test_written_file_has_released_layout_and_size(tmp_path, outputs):
    arch = "score" if outputs == 1 else "class"
    cfg = HeadConfig(name="X", rev="v1", arch=arch, outputs=outputs)
    path = save_head(random_head(cfg), cfg, tmp_path / "X-v1.safetensors")
    assert os.path.getsize(path) == RELEASED_SIZES[outputs]
    sd = load_file(str(path))
    assert sorted(sd) == sorted(STATE_DICT_KEYS) and len(sd) == 16
    assert all(t.dtype == torch.float32 for t in sd.values())
    data = path.read_bytes()  # plain safetensors, no __metadata__
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert "__metadata__" not in header
    assert sum(t.numel() for t in sd.values()) == 4_077_792 + 33 * outputs


def test_config_sidecar_is_in_released_format(tmp_path):
    cfg = HeadConfig(name="CCAnime-Compression", rev="v1.5", arch="class",
                     labels={"0": "Pass", "1": "JPEG", "2": "WEBP"}, outputs=3)
    save_head(random_head(cfg), cfg, tmp_path / "c.safetensors")
    text = (tmp_path / "c.config.json").read_text()
    expected = {"name": "CCAnime-Compression", "rev": "v1.5", "arch": "class",
                "labels": {"0": "Pass", "1": "JPEG", "2": "WEBP"},
                "model_params": {"features": 768, "hidden": 1024, "outputs": 3}}
    assert json.loads(text) == expected
    assert list(json.loads(text)) == list(expected)  # key order as released
    assert text.startswith('{\n  "name"')  # 2-space indent


def test_outputs_are_tanh_score_and_softmax_probabilities():
    x = torch.randn(4, 768)
    score = random_head(HeadConfig("s"), seed=3)
    z = score.logits(x)
    assert torch.allclose(score(x), (torch.tanh(z) + 1) / 2)
    cls = random_head(HeadConfig("c", arch="class", outputs=3), seed=4, gain=20)
    p = cls(x)
    assert torch.allclose(p, torch.softmax(cls.logits(x), dim=1))
    assert torch.allclose(p.sum(dim=1), torch.ones(4))


def test_layers_follow_the_released_table():
    """LeakyReLU(0.1) inside the residual block, ReLU after the sum, LeakyReLU(0.01) after down.1."""
    net = random_head(HeadConfig("s"), seed=5)
    x = torch.randn(3, 768)
    lin = lambda name, v: v @ net.state_dict()[f"{name}.weight"].T + net.state_dict()[f"{name}.bias"]  # noqa: E731
    h = lin("up.0", x)
    y = torch.nn.functional.leaky_relu(lin("up.1.long.0", h), 0.1)
    y = torch.nn.functional.leaky_relu(lin("up.1.long.2", y), 0.1)
    h = torch.relu(lin("up.1.long.4", y) + h)
    d = torch.nn.functional.leaky_relu(lin("down.1", lin("down.0", h)), 0.01)
    z = lin("down.5", lin("down.4", d))
    assert torch.allclose(net.eval()(x), (torch.tanh(z) + 1) / 2, atol=1e-6)


def test_sidecar_labels_are_used(class_head):
    assert class_head.labels == ["Pass", "JPEG", "WEBP"]
    assert class_head.name == "TestCompression-v1"


def test_class_count_inferred_without_config(tmp_path):
    path = build_head(tmp_path / "nocfg.safetensors", "class", labels={"0": "a", "1": "b", "2": "c", "3": "d"},
                      write_config=False)
    head = load_head(path)
    assert head.config.outputs == 4 and head.arch == "class"
    assert head.labels == ["0", "1", "2", "3"]  # the reference's fallback: str(i)
    single = load_head(build_head(tmp_path / "s.safetensors", "score", write_config=False))
    assert single.arch == "score" and single.labels == ["score"]


def test_other_feature_and_hidden_sizes_load_from_config(tmp_path):
    path = build_head(tmp_path / "vith.safetensors", "class", features=1024, hidden=1280)
    head = load_head(path)
    assert (head.features, head.config.hidden) == (1024, 1280)
    assert head.predict(torch.randn(2, 1024)).shape == (2, 2)
    with pytest.raises(WeightsError, match="takes 1024-d"):
        head.predict(torch.randn(2, 768))


def test_config_that_contradicts_the_weights_is_an_error(tmp_path):
    path = build_head(tmp_path / "h.safetensors", "class")
    cfg = json.loads((tmp_path / "h.config.json").read_text())
    cfg["model_params"]["features"] = 1024
    (tmp_path / "h.config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="config says features=1024.*weights have features=768"):
        load_head(path)


# ---------------------------------------------------------------- catalogue


@pytest.fixture
def fake_release(monkeypatch, tmp_path):
    """Make a random head file play the part of a released model (we cannot ship the real ones)."""
    src = build_head(tmp_path / "orig" / "Fake-v1.safetensors", "class",
                     labels={"0": "Pass", "1": "Chromatic Aberration"}, write_config=False)
    from cityclf_core.loading.weights import file_sha256

    release = catalogue.Release(
        name="FakeCA-v1.16", filename="FakeCA-v1.16.safetensors", repo_id="someone/FakeClassifiers",
        sha256=file_sha256(src), size=os.path.getsize(src),
        config=HeadConfig(name="FakeCA", rev="v1.16", arch="class",
                          labels={"0": "Pass", "1": "Chromatic Aberration"}, outputs=2),
        pairing=catalogue.Pairing(catalogue.VIT_L14, catalogue.CropPolicy(tiling=True, tile_size=512), "test"),
        alternative=catalogue.Pairing(catalogue.VIT_L14_336, catalogue.CropPolicy(tiling=True), "demo"),
    )
    monkeypatch.setattr(catalogue, "RELEASES", (*catalogue.RELEASES, release))
    monkeypatch.setattr(catalogue, "_BY_SHA", {**catalogue._BY_SHA, release.sha256: release})
    return release, src


def test_catalogue_facts():
    names = {r.name: r for r in catalogue.RELEASES}
    assert names["CityAesthetics-Anime-v1.8"].size == 16_312_596
    comp = names["CCAnime-Compression-v1.5"]
    assert comp.config.label_names == ["Pass", "JPEG", "WEBP"]
    assert comp.pairing.clip.repo_id == "openai/clip-vit-large-patch14-336"
    ca = names["CCAnime-ChromaticAberration-v1.16"]
    assert ca.pairing.clip.image_size == 224 and ca.pairing.policy.tile_size == 512
    assert ca.alternative.clip.image_size == 336
    assert catalogue.find_release("ccanime-compression") is comp
    assert catalogue.find_release("CCAnime-Compression-v1.5.safetensors") is comp


def test_renamed_configless_release_is_recognised_by_checksum(fake_release, tmp_path):
    release, src = fake_release
    renamed = tmp_path / "whatever I called it.safetensors"
    shutil.copy(src, renamed)
    head = load_head(renamed)
    assert head.release is release
    assert head.name == "FakeCA-v1.16"
    assert head.labels == ["Pass", "Chromatic Aberration"]
    # the pairing gives the CLIP and the tile policy, and the user can pick the other one
    assert catalogue.paired_clip(head).repo_id == "openai/clip-vit-large-patch14"
    assert default_policy(head, 224).tile_size == 512
    assert catalogue.paired_clip(head, "alternative").image_size == 336
    assert default_policy(head, 336).tile_size is None  # 2*S = 672 once resolved
    assert default_policy(head, 336).resolved(336).tile_size == 672


def test_unknown_head_is_not_a_release(score_head):
    assert score_head.release is None


def test_name_uses_local_file_without_downloading(fake_release, tmp_path):
    release, src = fake_release
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(src, models / release.filename)

    def no_download(**kw):
        raise AssertionError("must not download when the file is present")

    path = catalogue.download_release(release, models, _download=no_download)
    assert path == models / release.filename
    head = resolve_head("FakeCA-v1.16", search_dirs=[models], allow_download=False)
    assert head.release is release


def test_download_is_checksum_verified(fake_release, tmp_path):
    release, src = fake_release
    calls = []

    def fake_hub(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        return str(dest)

    models = tmp_path / "dl"
    path = catalogue.download_release(release, models, _download=fake_hub)
    assert calls == [(release.repo_id, release.filename)]
    assert path.read_bytes() == src.read_bytes()
    assert json.loads((models / "FakeCA-v1.16.config.json").read_text())["labels"]["1"] == "Chromatic Aberration"
    assert sorted(p.name for p in models.iterdir()) == ["FakeCA-v1.16.config.json", "FakeCA-v1.16.safetensors"]


def test_corrupted_download_is_rejected_and_removed(fake_release, tmp_path):
    release, _ = fake_release

    def bad_hub(repo_id, filename, local_dir):
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"\0" * 100)
        return str(dest)

    models = tmp_path / "dl"
    with pytest.raises(DownloadError, match="sha256"):
        catalogue.download_release(release, models, _download=bad_hub)
    assert list(models.iterdir()) == []


def test_offline_download_says_what_to_do(fake_release, tmp_path, monkeypatch):
    release, _ = fake_release

    def offline_hub(**kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    with pytest.raises(DownloadError, match="offline.*download .*FakeCA-v1.16.safetensors by hand"):
        catalogue.download_release(release, tmp_path, _download=offline_hub)
    with pytest.raises(DownloadError, match="downloads are off"):
        catalogue.download_release(release, tmp_path, allow_download=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="downloads are off"):
        catalogue.download_release(release, tmp_path, _download=offline_hub)


def test_unknown_name_lists_the_known_releases(tmp_path):
    with pytest.raises(WeightsError, match="not a known release.*CityAesthetics-Anime-v1.8"):
        resolve_head("NoSuchHead", search_dirs=[tmp_path])
    with pytest.raises(WeightsError, match="head file not found"):
        resolve_head(str(tmp_path / "missing.safetensors"))


# ---------------------------------------------------------------- bad weight files


def _bad(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    "data, message",
    [
        (b"<!DOCTYPE html>\n<html><head><title>CCAnime</title></head><body>...</body></html>" * 20, "saved web page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:76a346d0\nsize 16312860\n", "Git LFS pointer"),
        (pickle.dumps({"up.0.weight": [1.0, 2.0]}, protocol=4), "Python pickle"),
        (b"", "too small"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "header is invalid"),
        (b"PK\x03\x04" + b"\0" * 200, "zip archive"),
        (b'{"name": "x"}', "JSON/text file"),
    ],
    ids=["html", "lfs", "pickle", "empty", "truncated", "zip", "json"],
)
def test_files_that_are_not_safetensors(tmp_path, data, message):
    path = _bad(tmp_path, "head.safetensors", data)
    with pytest.raises(WeightsError, match=message) as e:
        load_head(path)
    assert str(path) in str(e.value)


def test_torch_save_file_loads_through_its_safetensors_copy(tmp_path):
    """A .pt is read by the weights-only loader and converted once; a .pt named .safetensors is still refused."""
    path = tmp_path / "head.pt"
    net = HeadNet(8, 16, 1)
    torch.save(net.state_dict(), path)
    head = load_head(path)
    assert head.path == tmp_path / "head.safetensors" and head.kind.name == "score"
    assert torch.equal(head.net.up[0].weight, net.up[0].weight)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="zip archive.*pickled weights can run code"):
        load_head(disguised)


def test_wrong_shapes_and_missing_keys(tmp_path):
    sd = {k: v.contiguous() for k, v in HeadNet().state_dict().items()}
    bad = dict(sd)
    bad["up.1.long.2.weight"] = torch.zeros(1024, 512)
    save_file(bad, str(tmp_path / "shape.safetensors"))
    with pytest.raises(WeightsError, match=r"up.1.long.2.weight has shape \(1024, 512\), expected \(1024, 1024\)"):
        load_head(tmp_path / "shape.safetensors")
    missing = {k: v for k, v in sd.items() if not k.startswith("down.4")}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match="missing down.4.weight, down.4.bias"):
        load_head(tmp_path / "missing.safetensors")
    other = {"model.layer.weight": torch.zeros(3, 3)}
    save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="other.safetensors is not a known head layout: keys model.layer.weight"):
        load_head(tmp_path / "other.safetensors")


def test_truncated_safetensors_and_nan_weights(tmp_path, score_head_path):
    data = score_head_path.read_bytes()
    trunc = _bad(tmp_path, "trunc.safetensors", data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_head(trunc)
    sd = load_file(str(score_head_path))
    sd["down.0.weight"][0, 0] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    with pytest.raises(WeightsError, match="NaN"):
        load_head(tmp_path / "nan.safetensors")


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="is a folder"):
        load_head(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        load_head(tmp_path / "nope.safetensors")


def test_broken_sidecar_is_named(tmp_path):
    path = build_head(tmp_path / "h.safetensors", "class")
    (tmp_path / "h.config.json").write_text("{not json")
    with pytest.raises(WeightsError, match=r"h.config.json is not valid JSON"):
        load_head(path)
    (tmp_path / "h.config.json").write_text(json.dumps({"arch": "regression", "model_params": {"outputs": 2}}))
    with pytest.raises(WeightsError, match="arch must be 'score', 'class', 'laion-aesthetic' or 'waifu-scorer'"):
        load_head(path)
