"""Gate, Sort / Top-K, Tag and Show: batches of 1, many, mixed sizes, empty sides, latents and masks."""

from __future__ import annotations

import json
from importlib import import_module

import pytest
import torch
from conftest import as_image_tensor, illustration

from cityclf_core import ConfigError, ImageError
from cityclf_core.tags import TagRules, merge_caption, sidecar_path


@pytest.fixture
def nodes(pack, model_dir, monkeypatch, score_head_path, class_head_path, tmp_path):
    monkeypatch.setenv("CITYCLF_MODELS", str(model_dir))
    bridge = import_module("cityclf_pack.nodes.comfy_bridge")
    monkeypatch.setattr(bridge, "temp_dir", lambda: str(tmp_path / "temp"))
    return import_module("cityclf_pack.nodes")


@pytest.fixture
def Blocked(nodes):
    return import_module("cityclf_pack.nodes.comfy_bridge").Blocked


def batch(n, w=48, h=40):
    return torch.stack([torch.full((h, w, 3), i / 10.0) for i in range(n)])


def gate(nodes, images, scores, **kw):
    args = {"images": images if isinstance(images, list) else [images], "scores": scores}
    args.update({k: v if k in ("latent", "mask") else [v] for k, v in kw.items()})
    return nodes.CityClfGate().gate(**args)["result"]


def test_gate_splits_by_absolute_threshold(nodes):
    imgs = batch(5)
    p, f, pl, fl, pm, fm, pi, fi, pc, fc = gate(nodes, imgs, [0.9, 0.2, 0.5, 0.7, 0.49], threshold=0.5)
    assert json.loads(pi) == [0, 2, 3] and json.loads(fi) == [1, 4] and (pc, fc) == (3, 2)
    assert len(p) == 1 and torch.equal(p[0], imgs[[0, 2, 3]])  # one batch, input order
    assert torch.equal(f[0], imgs[[1, 4]])


def test_gate_rules(nodes):
    imgs, scores = batch(4), [0.1, 0.4, 0.6, 0.9]
    assert json.loads(gate(nodes, imgs, scores, rule="at most", threshold=0.4)[6]) == [0, 1]
    assert json.loads(gate(nodes, imgs, scores, rule="between", threshold=0.3, upper=0.6)[6]) == [1, 2]
    with pytest.raises(ConfigError, match="upper .* is below threshold"):
        gate(nodes, imgs, scores, rule="between", threshold=0.7, upper=0.6)


def test_gate_threshold_is_not_relative_to_the_batch(nodes, Blocked):
    out = gate(nodes, batch(3), [0.2, 0.3, 0.25], threshold=0.5)
    assert isinstance(out[0], Blocked)  # the best of a bad batch does not pass
    assert out[8] == 0 and out[9] == 3


def test_gate_batch_of_one_and_empty_sides_are_blocked_not_black(nodes, Blocked):
    one = batch(1)
    passed = gate(nodes, one, [0.8], threshold=0.5)
    assert torch.equal(passed[0][0], one) and isinstance(passed[1], Blocked)
    assert isinstance(passed[3], Blocked) and isinstance(passed[5], Blocked)  # failed latent/mask blocked too
    failed = gate(nodes, one, [0.1], threshold=0.5)
    assert isinstance(failed[0], Blocked) and torch.equal(failed[1][0], one)
    assert failed[0].message is None  # silent: downstream skipped, no error


def test_gate_fail_when_none_pass(nodes):
    with pytest.raises(ConfigError, match=r"no image passed the gate \(at least 0.5\); the best score was 0.3"):
        gate(nodes, batch(2), [0.2, 0.3], threshold=0.5, fail_when_none_pass=True)


def test_gate_latents_and_masks_follow_their_images(nodes):
    imgs = batch(4)
    latent = {"samples": torch.arange(4.0).view(4, 1, 1, 1).expand(4, 4, 5, 6).clone(),
              "batch_index": [10, 11, 12, 13]}
    mask = torch.arange(4.0).view(4, 1, 1).expand(4, 40, 48).clone()
    out = gate(nodes, imgs, [0.9, 0.1, 0.8, 0.2], threshold=0.5, latent=[latent], mask=[mask])
    p_lat, f_lat, p_mask = out[2][0], out[3][0], out[4][0]
    assert p_lat["samples"][:, 0, 0, 0].tolist() == [0.0, 2.0] and p_lat["batch_index"] == [10, 12]
    assert f_lat["samples"][:, 0, 0, 0].tolist() == [1.0, 3.0]
    assert p_mask[:, 0, 0].tolist() == [0.0, 2.0]


def test_gate_mismatched_latent_mask_or_scores_are_clear_errors(nodes):
    imgs = batch(3)
    with pytest.raises(ConfigError, match="3 image.* but a latent batch of 2"):
        gate(nodes, imgs, [1, 1, 1], latent=[{"samples": torch.zeros(2, 4, 5, 6)}])
    with pytest.raises(ConfigError, match="3 image.* but a mask batch of 1"):
        gate(nodes, imgs, [1, 1, 1], mask=[torch.zeros(1, 40, 48)])
    with pytest.raises(ConfigError, match="3 image.* but 2 scores"):
        gate(nodes, imgs, [1, 1])


def test_gate_unconnected_latent_output_explains(nodes, Blocked):
    out = gate(nodes, batch(2), [0.9, 0.1])
    assert isinstance(out[2], Blocked) and "latent input is not connected" in out[2].message


def test_gate_nan_score_fails_and_mixed_sizes_stay_lists(nodes):
    small, big = batch(2, 30, 20), batch(1, 64, 64)
    out = gate(nodes, [small, big], [0.9, float("nan"), 0.95], threshold=0.5)
    assert json.loads(out[6]) == [0, 2]
    assert [tuple(t.shape) for t in out[0]] == [(1, 20, 30, 3), (1, 64, 64, 3)]


def sort(nodes, images, scores, **kw):
    args = {"images": images if isinstance(images, list) else [images], "scores": scores}
    args.update({k: v if k in ("latent", "mask") else [v] for k, v in kw.items()})
    return nodes.CityClfSort().sort(**args)["result"]


def test_sort_and_top_k(nodes):
    imgs = batch(5)
    latent = {"samples": torch.arange(5.0).view(5, 1, 1, 1).expand(5, 4, 2, 2).clone()}
    out = sort(nodes, imgs, [0.3, 0.9, 0.5, 0.9, 0.1], top_k=3, latent=[latent])
    assert json.loads(out[4]) == [1, 3, 2]  # ties keep input order
    assert out[3] == [0.9, 0.9, 0.5]
    assert torch.equal(out[0][0], imgs[[1, 3, 2]])
    assert out[1][0]["samples"][:, 0, 0, 0].tolist() == [1.0, 3.0, 2.0]
    worst = sort(nodes, imgs, [0.3, 0.9, 0.5, float("nan"), 0.1], order="worst first")
    assert json.loads(worst[4]) == [4, 0, 2, 1, 3]  # NaN last
    assert len(sort(nodes, imgs, [0.3, 0.9, 0.5, 0.9, 0.1], top_k=99)[3]) == 5


def test_sort_mixed_sizes_and_single(nodes):
    a, b = batch(2, 30, 20), batch(1, 64, 64)
    out = sort(nodes, [a, b], [0.1, 0.5, 0.9])
    assert json.loads(out[4]) == [2, 1, 0]
    assert [tuple(t.shape) for t in out[0]] == [(1, 64, 64, 3), (2, 20, 30, 3)]
    one = sort(nodes, batch(1), [0.4], top_k=1)
    assert out[3] and one[3] == [0.4]


# ---------------------------------------------------------------- tags


def test_tag_rules_on_results(encoder, class_head, score_head):
    from cityclf_core import ScoringModel

    model = ScoringModel().add(score_head, encoder).add(class_head, encoder)
    results = model.score(as_image_tensor(*[illustration(100, 90, s) for s in range(6)]))
    rules = TagRules.from_text("", "0.3", "decile")
    for r in results:
        tags = rules.tags_for(r)
        score = r["TestAesthetics-v1"].score
        assert tags[0] == f"testaesthetics_{int(score * 10) * 10}"
        probs = r["TestCompression-v1"].probs
        assert ("jpeg" in tags) == (probs["JPEG"] >= 0.3) and ("webp" in tags) == (probs["WEBP"] >= 0.3)
    renamed = TagRules.from_text("TestCompression:JPEG = jpeg_artifacts\nTestAesthetics = aes", "0.0", "percent")
    tags = renamed.tags_for(results[0])
    assert tags[0].startswith("aes_") and "jpeg_artifacts" in tags and "webp" in tags
    dropped = TagRules.from_text("TestCompression-v1:WEBP =", "0.0", "none")
    assert dropped.tags_for(results[0]) == ["jpeg"]
    with pytest.raises(ConfigError, match="not of the form"):
        TagRules.from_text("jpeg", "0.5")
    with pytest.raises(ConfigError, match="not a number"):
        TagRules.from_text("", "TestCompression = high")


def test_merge_caption_keeps_other_text_and_is_idempotent():
    owned = lambda t: t in {"jpeg_artifacts", "webp_artifacts"} or t.startswith("aesthetic_")  # noqa: E731
    text = "1girl, solo,  looking at viewer, aesthetic_40, jpeg_artifacts\n"
    new = merge_caption(text, ["aesthetic_70", "webp_artifacts"], owned)
    assert new == "1girl, solo,  looking at viewer, aesthetic_70, webp_artifacts\n"
    assert merge_caption(new, ["aesthetic_70", "webp_artifacts"], owned) == new
    assert merge_caption("", ["aesthetic_70"], owned) == "aesthetic_70\n"
    free = "A drawing of a cat.\nSecond line, with a comma."
    assert merge_caption(free, [], owned) == free  # nothing of ours: byte-identical
    assert merge_caption(free, ["jpeg_artifacts"], owned) == free + ", jpeg_artifacts\n"


def test_tag_node_writes_sidecars_idempotently(nodes, tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CITYCLF_ALLOWED_ROOTS", str(tmp_path))  # outside ComfyUI's folders
    from PIL import Image

    loader = nodes.CityClfLoader()
    m = loader.load(head="TestAesthetics-v1.safetensors", clip=str(tiny_clip_dir))["result"][0]
    m = loader.load(head="TestCompression-v1.safetensors", clip=str(tiny_clip_dir), add_to=m)["result"][0]
    arrays = [illustration(100, 90, s) for s in range(3)]
    files = []
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"img{i}.png")
        files.append(str(tmp_path / f"img{i}.png"))
    sidecar_path(files[0]).write_text("1girl, smile, testaesthetics_0, jpeg\n")
    args = dict(model=[m], images=[as_image_tensor(*arrays)], thresholds=["0.2"], score_bucket=["decile"],
                tag_names=[""], separator=[", "], tiling=["auto"], combine=["mean"], write_sidecars=[True],
                paths=["\n".join(files)])
    out = nodes.CityClfTag().tag(**args)
    tags, lists = out["result"]
    assert len(tags) == 3 and [json.loads(x) for x in lists] == [t.split(", ") for t in tags]
    first_text = sidecar_path(files[0]).read_text()
    assert first_text.startswith("1girl, smile")
    assert first_text.count("testaesthetics_") == 1 and first_text.strip().endswith(tags[0].split(", ")[-1])
    snapshot = [sidecar_path(f).read_text() for f in files]
    out2 = nodes.CityClfTag().tag(**args)
    assert [sidecar_path(f).read_text() for f in files] == snapshot  # rerun: unchanged
    assert "0 updated, 3 already up to date" in out2["ui"]["text"][-1]
    with pytest.raises(ConfigError, match="one path per image"):
        nodes.CityClfTag().tag(**{**args, "paths": [files[0]]})
    with pytest.raises(ImageError, match="no such image file"):
        nodes.CityClfTag().tag(**{**args, "paths": ["\n".join(files[:2] + [str(tmp_path / "gone.png")])]})


# ---------------------------------------------------------------- show


@pytest.mark.parametrize("w, h", [(32, 32), (1024, 768)])
def test_show_draws_readable_text_on_small_and_large(nodes, tmp_path, w, h):
    imgs = torch.full((2, h, w, 3), 0.8)
    out = nodes.CityClfShow().show(images=[imgs], position=["bottom"], preview=[True], scores=[0.734, 0.2],
                                   labels=["JPEG", "Pass"])
    annotated = out["result"][0][0]
    assert annotated.shape == imgs.shape
    band = annotated[:, h // 2 :]
    assert (band < 0.5).float().mean() > 0.05  # a dark band was drawn
    assert (band > 0.85).any()  # with bright text in it (the band over this background is ~0.33)
    assert torch.equal(annotated[:, :4], imgs[:, :4]) if h > 100 else True  # top left untouched on large images
    assert len(out["ui"]["images"]) == 2
    assert (tmp_path / "temp" / out["ui"]["images"][0]["filename"]).is_file()


def test_show_from_json_and_errors(nodes, two_head_json):
    imgs = torch.full((1, 200, 300, 3), 0.5)
    out = nodes.CityClfShow().show(images=[imgs], position=["top"], preview=[False], json=two_head_json)
    assert out["result"][0][0].shape == (1, 200, 300, 3) and out["ui"] == {}
    with pytest.raises(ConfigError, match="1 image.* but 2 scores"):
        nodes.CityClfShow().show(images=[imgs], position=["top"], preview=[False], scores=[0.1, 0.2])
    with pytest.raises(ConfigError, match="connect at least one"):
        nodes.CityClfShow().show(images=[imgs], position=["top"], preview=[False])


@pytest.fixture
def two_head_json():
    return [json.dumps({"A-v1": {"arch": "score", "score": 0.71, "label": "71%", "views": 1},
                        "B-v1": {"arch": "class", "score": 0.2, "label": "Pass", "views": 5,
                                 "probs": {"Pass": 0.8, "JPEG": 0.2}}})]


# ---------------------------------------------------------------- load images


def test_load_images_lists_sizes_paths_and_skips_bad_files(nodes, tmp_path, monkeypatch):
    monkeypatch.setenv("CITYCLF_ALLOWED_ROOTS", str(tmp_path))  # outside ComfyUI's folders
    from PIL import Image

    folder = tmp_path / "set"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(illustration(40, 30, 1)).save(folder / "b.png")
    Image.fromarray(illustration(64, 64, 2)).save(folder / "a.jpg")
    Image.fromarray(illustration(20, 50, 3)).save(folder / "sub" / "c.png")
    (folder / "broken.png").write_bytes(b"nope")
    (folder / "notes.txt").write_text("not an image")
    node = nodes.CityClfLoadImages()
    out = node.load(folder=str(folder), recursive=False, limit=0, skip=0)
    images, paths, count = out["result"]
    assert [p.split("/")[-1] for p in paths] == ["a.jpg", "b.png"] and count == 2
    assert [tuple(i.shape) for i in images] == [(1, 64, 64, 3), (1, 30, 40, 3)]
    assert any("broken.png" in line for line in out["ui"]["text"])
    rec = node.load(folder=str(folder), recursive=True, limit=3, skip=1)["result"]  # b, broken, sub/c
    assert [p.split("/")[-1] for p in rec[1]] == ["b.png", "c.png"]
    before = node.IS_CHANGED(str(folder), False, 0, 0)
    Image.fromarray(illustration(10, 10)).save(folder / "d.png")
    assert node.IS_CHANGED(str(folder), False, 0, 0) != before
    with pytest.raises(ConfigError, match="does not exist"):
        node.load(folder=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no readable images"):
        node.load(folder=str(tmp_path / "empty"))


def test_loaded_list_flows_through_predict_and_gate(nodes, tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CITYCLF_ALLOWED_ROOTS", str(tmp_path))  # outside ComfyUI's folders
    from PIL import Image

    for i, (w, h) in enumerate([(40, 30), (90, 120), (200, 100)]):
        Image.fromarray(illustration(w, h, i)).save(tmp_path / f"{i}.png")
    images, paths, _ = nodes.CityClfLoadImages().load(folder=str(tmp_path))["result"]
    model = nodes.CityClfLoader().load(head="TestCompression-v1.safetensors", clip=str(tiny_clip_dir))["result"][0]
    scores = nodes.CityClfPredict().predict(model=[model], images=images, tiling=["auto"], combine=["mean"],
                                            never_upscale=[False])["result"][0]
    assert len(scores) == 3
    threshold = sorted(scores)[1]
    out = gate(nodes, images, scores, threshold=threshold)
    assert out[8] == 2 and [tuple(t.shape[1:3]) for t in out[0]] == [
        tuple(images[i].shape[1:3]) for i in json.loads(out[6])]
