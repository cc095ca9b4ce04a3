"""The pipeline: one CLIP pass per (encoder, crop policy), chunking, mixed sizes, bad tensors."""

from __future__ import annotations

import pytest
import torch
from conftest import as_image_tensor, illustration

from cityclf_core import (
    ConfigError,
    CropPolicy,
    Encoder,
    ImageError,
    ScoringModel,
    TransformersClipEncoder,
    WeightsError,
    iter_embeddings,
)
from cityclf_core.samples import build_head


class CountingEncoder(Encoder):
    """Wraps a real encoder and records every forward's batch size."""

    def __init__(self, inner):
        self.inner = inner
        self.image_size, self.embed_dim = inner.image_size, inner.embed_dim
        self.identity, self.name = inner.identity, inner.name
        self.calls: list[int] = []

    def encode(self, views):
        self.calls.append(int(views.shape[0]))
        assert views.shape[1:] == (3, self.image_size, self.image_size)
        return self.inner.encode(views)


@pytest.fixture
def counting(encoder):
    return CountingEncoder(encoder)


def mixed_images():
    """Below, between and above the S=32 tiling threshold (T=64), as a list of different sizes."""
    return [torch.from_numpy(illustration(w, h, i)).float() / 255
            for i, (w, h) in enumerate([(40, 50), (120, 90), (300, 200), (64, 64), (500, 130)])]


def test_heads_sharing_a_clip_and_policy_share_one_pass(counting, class_head, model_dir, calibration):
    other = build_head(model_dir / "Second-v1.safetensors", "class", labels={"0": "Pass", "1": "Chroma"}, name="Second", rev="v1",
                       seed=9, calibrate_with=calibration)
    from cityclf_core import load_head

    model = ScoringModel().add(class_head, counting).add(load_head(other), counting)
    assert len(model.groups()) == 1
    images = mixed_images()
    results = model.score(images, batch_size=1000)
    views = [1, 5, 5, 1, 5]  # whole below/at T, five tiles above
    assert counting.calls == [sum(views)]  # one forward for both heads
    assert [r[class_head.name].views for r in results] == views
    assert set(results[0]) == {class_head.name, "Second-v1"}


def test_score_and_class_heads_make_two_groups(counting, class_head, score_head):
    model = ScoringModel().add(score_head, counting).add(class_head, counting)
    groups = model.groups()
    assert [g.policy.tiling for g in groups] == [False, True]
    results = model.score(mixed_images(), batch_size=1000)
    # one pass over the encoder; images too small to tile have the same single view under
    # both policies and are embedded once for both heads: 1 + 6 + 6 + 1 + 6
    assert counting.calls == [20]
    assert [r[class_head.name].views for r in results] == [1, 5, 5, 1, 5]
    assert [r[score_head.name].views for r in results] == [1, 1, 1, 1, 1]
    counting.calls.clear()
    model.score(mixed_images(), tiling="off", batch_size=1000)
    assert counting.calls == [5]  # forced whole image: one group again


def test_chunking_bounds_every_forward_and_does_not_change_results(counting, class_head, score_head):
    model = ScoringModel().add(score_head, counting).add(class_head, counting)
    big = model.score(mixed_images(), batch_size=1000)
    counting.calls.clear()
    small = model.score(mixed_images(), batch_size=3)
    assert max(counting.calls) <= 3 and sum(counting.calls) == 20
    for a, b in zip(big, small):
        for name in a:
            assert a[name].values == pytest.approx(b[name].values, abs=1e-5)


def test_memory_is_bounded_by_the_chunk_not_the_batch(counting):
    """Views are made image by image: at most one chunk plus one image's views wait at once."""
    seen_max = []
    images = [torch.rand(100, 100, 3) for _ in range(40)]
    gen = iter_embeddings(counting, CropPolicy(tiling=True), iter(images), batch_size=4)
    pulled = 0
    for idx, emb in gen:
        assert emb.shape == (5, 768)
        assert idx == pulled
        pulled += 1
        seen_max.append(max(counting.calls))
    assert pulled == 40 and max(counting.calls) <= 4 and len(counting.calls) == 50


def test_results_keep_input_order_and_batch_equals_single(encoder, class_head, score_head):
    model = ScoringModel().add(score_head, encoder).add(class_head, encoder)
    arrays = [illustration(96, 80, seed) for seed in range(4)]
    batch = model.score(as_image_tensor(*arrays))
    singles = [model.score(as_image_tensor(a))[0] for a in arrays]
    for b, s in zip(batch, singles):
        for name in b:
            assert b[name].values == pytest.approx(s[name].values, abs=1e-5)
    assert len({round(r[score_head.name].score, 4) for r in batch}) == 4


def test_images_of_different_sizes_in_one_call(encoder, class_head):
    model = ScoringModel().add(class_head, encoder)
    batch_a = as_image_tensor(illustration(70, 70, 1), illustration(70, 70, 2))
    batch_b = as_image_tensor(illustration(200, 90, 3))
    results = model.score([batch_a, batch_b])
    assert len(results) == 3
    assert [r[class_head.name].views for r in results] == [5, 5, 5]


def test_empty_batch_gives_no_results(encoder, class_head):
    model = ScoringModel().add(class_head, encoder)
    assert model.score(torch.zeros(0, 64, 64, 3)) == []
    assert model.score([]) == []


def test_nan_pixels_are_a_clear_error(encoder, class_head):
    model = ScoringModel().add(class_head, encoder)
    img = torch.rand(1, 50, 50, 3)
    img[0, 3, 4, 1] = float("nan")
    with pytest.raises(ImageError, match="image 0 contains NaN"):
        model.score(img)


def test_odd_tensors(encoder, class_head):
    model = ScoringModel().add(class_head, encoder)
    gray = model.score(torch.rand(1, 40, 40, 1))
    rgba = model.score(torch.rand(1, 40, 40, 4))
    assert len(gray) == len(rgba) == 1
    with pytest.raises(ImageError, match="channels last"):
        model.score(torch.rand(1, 3, 40, 40))
    with pytest.raises(ImageError, match=r"expected an IMAGE shaped \[B, H, W, C\]"):
        model.score(torch.rand(40, 40))
    one = model.score(torch.rand(1, 1, 1, 3))  # a 1x1 image: upscaled to one whole view
    assert one[0][class_head.name].views == 1


def test_class_score_is_probability_of_non_pass(encoder, class_head):
    model = ScoringModel().add(class_head, encoder)
    r = model.score(mixed_images())[2][class_head.name]
    assert r.score == pytest.approx(1 - r.values[0], abs=1e-6)  # mean: 1 - P(Pass)
    assert r.value_of("JPEG") == r.values[1]
    assert r.label == r.labels[max(range(3), key=lambda i: r.values[i])]
    assert sum(r.values) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError, match="no class 'Noise'"):
        r.value_of("Noise")
    rmax = model.score(mixed_images(), combine="max")[2][class_head.name]
    assert rmax.score >= r.score - 1e-6  # max over tiles of P(not pass)


def test_embedding_size_mismatch_names_both(encoder, model_dir):
    from cityclf_core import load_head

    head = load_head(build_head(model_dir / "ViTH-v1.safetensors", "score", features=1024, hidden=1280))
    with pytest.raises(WeightsError, match=r"takes 1024-d embeddings, but CLIP tiny-clip gives 768-d"):
        ScoringModel().add(head, encoder)


def test_heads_run_in_float32_with_a_bf16_clip(tiny_clip_dir, score_head):
    enc = TransformersClipEncoder.load(tiny_clip_dir, dtype="bf16")
    assert enc.dtype == torch.bfloat16
    model = ScoringModel().add(score_head, enc)
    r = model.score(torch.rand(2, 40, 40, 3))
    assert all(isinstance(x[score_head.name].score, float) for x in r)
    assert next(score_head.net.parameters()).dtype == torch.float32


def test_two_encoders_two_groups(encoder, tiny_clip_dir_b, class_head, score_head):
    enc_b = TransformersClipEncoder.load(tiny_clip_dir_b)
    model = ScoringModel().add(class_head, encoder).add(score_head, enc_b)
    groups = model.groups()
    assert [g.encoder.image_size for g in groups] == [32, 48]
    results = model.score(mixed_images())
    assert list(results[0]) == [class_head.name, score_head.name]


def test_duplicate_head_names_are_made_unique(encoder, class_head):
    model = ScoringModel().add(class_head, encoder).add(class_head, encoder)
    assert model.names == ["TestCompression-v1", "TestCompression-v1#2"]


def test_progress_reports_views_and_can_stop_the_run(encoder, class_head):
    model = ScoringModel().add(class_head, encoder)
    seen = []
    model.score(mixed_images(), batch_size=4, on_progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 17) and seen[-1] == (17, 17)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    class Stop(Exception):
        pass

    def stop(done, total):
        if done >= 4:
            raise Stop

    with pytest.raises(Stop):
        model.score(mixed_images(), batch_size=4, on_progress=stop)


def test_unknown_options(encoder, class_head):
    model = ScoringModel().add(class_head, encoder)
    with pytest.raises(ConfigError, match="unknown tiling mode"):
        model.score(torch.rand(1, 40, 40, 3), tiling="sometimes")
    with pytest.raises(ConfigError, match="unknown combine"):
        model.score(torch.rand(1, 40, 40, 3), combine="average")
    with pytest.raises(ConfigError, match="no heads"):
        ScoringModel().score(torch.rand(1, 40, 40, 3))


def test_hub_clip_downloads_only_when_allowed(tmp_path, tiny_clip_dir, monkeypatch):
    """A hub id is looked up locally first and fetched only with allow_download (a local fake stands in for the hub)."""
    import shutil

    import huggingface_hub

    from cityclf_core import DownloadError
    from cityclf_core.loading.clips import locate_clip

    calls = []

    def fake_snapshot(repo_id, local_files_only=False, local_dir=None, allow_patterns=None, **kw):
        calls.append((repo_id, local_files_only))
        target = tmp_path / "hub" / repo_id.replace("/", "--")
        if local_files_only and not target.exists():
            raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")
        if not target.exists():
            assert "model.safetensors" in allow_patterns and "*.bin" not in allow_patterns  # only safetensors
            shutil.copytree(tiny_clip_dir, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(DownloadError, match="not on this machine and downloads are off"):
        locate_clip("someone/tiny-clip", allow_download=False)
    folder, name = locate_clip("someone/tiny-clip", allow_download=True)
    assert name == "tiny-clip" and (folder / "config.json").is_file()
    assert calls == [("someone/tiny-clip", True), ("someone/tiny-clip", True), ("someone/tiny-clip", False)]
    calls.clear()
    assert locate_clip("someone/tiny-clip")[0] == folder and calls == [("someone/tiny-clip", True)]  # cached now
    enc = TransformersClipEncoder.load("someone/tiny-clip")
    assert enc.image_size == 32
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="downloads are off"):
        locate_clip("someone/other-clip", allow_download=True)
    with pytest.raises(Exception, match="neither a folder nor a hub id"):
        locate_clip("not a/valid/id")


def test_clip_folders_that_are_not_what_they_claim(tmp_path, tiny_clip_dir):
    import shutil

    from cityclf_core.loading.clip_folder import check_clip_folder
    from cityclf_core.loading.clips import locate_clip

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_clip_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="no .safetensors weights.*pytorch_model.bin.*never loaded"):
        check_clip_folder(pickled)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="has no config.json"):
        check_clip_folder(empty)
    page = tmp_path / "clip.safetensors"
    page.write_text("<html><body>not weights</body></html>")
    with pytest.raises(WeightsError, match="saved web page"):
        locate_clip(page)
    lfs = tmp_path / "lfs"
    shutil.copytree(tiny_clip_dir, lfs)
    (lfs / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 10\n")
    with pytest.raises(WeightsError, match="Git LFS pointer"):
        TransformersClipEncoder.load(lfs)
