"""LAION's aesthetic predictor and waifu-scorer: their .pth files, their forward, one CLIP pass with CityAesthetics.

The references here are the two projects' published networks written out
independently in a few lines (their exact state-dict layout, their L2
normalisation with a zero norm taken as 1, waifu-scorer's clamp to 0..10), with
seeded random weights saved as they ship: a pickled state dict in a .pth.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import illustration
from PIL import Image
from safetensors.torch import load_file, save_file
from test_pipeline import CountingEncoder

from cityclf_core import CropPolicy, ScoringModel, TransformersClipEncoder, iter_embeddings, load_head
from cityclf_core.cli import main
from cityclf_core.errors import WeightsError
from cityclf_core.store import EmbeddingStore
from cityclf_core.loading.torch_heads import conversion_record

TOLERANCE = 1e-5


class LaionMLP(torch.nn.Module):
    """improved-aesthetic-predictor's MLP: linears with dropout between, no activations."""

    def __init__(self, d=768):
        super().__init__()
        L, D = torch.nn.Linear, torch.nn.Dropout
        self.layers = torch.nn.Sequential(L(d, 1024), D(0.2), L(1024, 128), D(0.2), L(128, 64), D(0.1), L(64, 16),
                                          L(16, 1))

    def forward(self, x):
        return self.layers(x)


class WaifuMLP(torch.nn.Module):
    """waifu-scorer v3's MLP: (Linear, ReLU, BatchNorm1d, Dropout) x4, Linear, ReLU, Linear."""

    def __init__(self, d=768):
        super().__init__()
        L, R, B, D = torch.nn.Linear, torch.nn.ReLU, torch.nn.BatchNorm1d, torch.nn.Dropout
        self.layers = torch.nn.Sequential(
            L(d, 2048), R(), B(2048), D(0.3), L(2048, 512), R(), B(512), D(0.3), L(512, 256), R(), B(256), D(0.2),
            L(256, 128), R(), B(128), D(0.1), L(128, 32), R(), L(32, 1))

    def forward(self, x):
        return self.layers(x)


def normalized(a: np.ndarray) -> np.ndarray:
    """Their normalisation: divide by the L2 norm, a zero norm taken as 1."""
    l2 = np.atleast_1d(np.linalg.norm(a, 2, -1))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, -1)


@torch.no_grad()
def reference_rating(net, embeddings: torch.Tensor, normalise: bool = True) -> list[float]:
    x = embeddings.numpy()
    x = normalized(x) if normalise else x
    out = net.eval()(torch.from_numpy(x).float())[:, 0]
    return (out.clamp(0, 10) if isinstance(net, WaifuMLP) else out).tolist()


@torch.no_grad()
def random_reference(cls, seed: int, calibration: torch.Tensor):
    """Seeded random weights (BatchNorm statistics too), the output spread over 2..8 on the test images."""
    torch.manual_seed(seed)
    net = cls()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.05)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
            m.num_batches_tracked.fill_(1234)
    net.eval()
    x = torch.from_numpy(normalized(calibration.numpy())).float()
    first = net.layers[0]  # a random CLIP's embeddings share most of their direction: spread what differs
    first.weight.div_((x - x.mean(0)).matmul(first.weight.T).std())
    first.bias.copy_(-x.mean(0).matmul(first.weight.T))
    z = net(x)[:, 0]
    last = net.layers[-1]
    last.weight.mul_(1.5 / z.std())
    last.bias.copy_((last.bias - z.mean()) * 1.5 / z.std() + 5.0)
    return net


@pytest.fixture(scope="module")
def references(calibration):
    return {"laion-aesthetic": random_reference(LaionMLP, 11, calibration),
            "waifu-scorer": random_reference(WaifuMLP, 12, calibration)}


@pytest.fixture(scope="module")
def pth_files(references, tmp_path_factory):
    """The two heads as they ship: `torch.save(state_dict)`; waifu-scorer's keys with torch.compile's prefix."""
    d = tmp_path_factory.mktemp("pth")
    laion, waifu = d / "sac+logos+ava1-l14-linearMSE.pth", d / "model.pth"
    torch.save(references["laion-aesthetic"].state_dict(), laion)
    torch.save({f"_orig_mod.{k}": v for k, v in references["waifu-scorer"].state_dict().items()}, waifu)
    return {"laion-aesthetic": laion, "waifu-scorer": waifu}


@pytest.fixture(scope="module")
def heads(pth_files):
    return {arch: load_head(path) for arch, path in pth_files.items()}


def images():
    return [torch.from_numpy(illustration(w, h, seed=40 + i)) for i, (w, h) in
            enumerate([(40, 50), (120, 90), (300, 200), (64, 64), (90, 160)])]


class RecordingEncoder(CountingEncoder):
    """Keeps what CLIP gave, so that the reference is fed exactly the pipeline's embeddings."""

    def __init__(self, inner):
        super().__init__(inner)
        self.outputs: list[torch.Tensor] = []

    def encode(self, views):
        out = super().encode(views)
        self.outputs.append(out)
        return out


def whole_image_embeddings(encoder, imgs) -> torch.Tensor:
    return torch.cat([e for _, e in iter_embeddings(encoder, CropPolicy(tiling=False), imgs, batch_size=16)])


# ---------------------------------------------------------------- files


def test_pth_files_are_recognised_by_layout_and_converted_once_beside_them(pth_files, heads, capsys):
    for arch, path in pth_files.items():
        head = heads[arch]
        assert head.kind.name == arch and head.features == 768 and head.labels == ["rating"]
        copy = path.with_suffix(".safetensors")
        assert head.path == copy
        record = conversion_record(copy)
        assert record["converted_from"] == path.name and len(record["source_md5"]) == 32
        assert head.kind.clip == "openai/clip-vit-large-patch14"
    stats = pth_files["waifu-scorer"].with_suffix(".safetensors").stat()
    again = load_head(pth_files["waifu-scorer"])  # read from the copy: nothing converted, nothing written
    assert again.path.stat().st_mtime_ns == stats.st_mtime_ns
    tensors = load_file(str(again.path))
    assert tensors["layers.2.num_batches_tracked"].dtype == torch.int64  # keys without the compile prefix
    assert "converted" not in capsys.readouterr().err


def test_published_checksum_names_the_head(tmp_path, references, monkeypatch):
    import cityclf_core.loading.catalogue as catalogue

    path = tmp_path / "aesthetic.pth"
    torch.save(references["laion-aesthetic"].state_dict(), path)
    from cityclf_core.loading.torch_heads import _md5

    known = catalogue.OTHER_HEADS[0]
    monkeypatch.setattr(catalogue, "OTHER_HEADS", (catalogue.OtherHead(**{**known.__dict__, "md5": _md5(path)}),))
    assert load_head(path).name == "LAION-Aesthetic-v2"


def test_a_name_taken_beside_the_file_sends_the_copy_to_the_cache(tmp_path, references, monkeypatch):
    monkeypatch.setenv("CITYCLF_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.pth"
    torch.save(references["laion-aesthetic"].state_dict(), path)
    users = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(2)}, str(users))
    before = users.read_bytes()
    head = load_head(path)
    assert users.read_bytes() == before
    assert head.path.is_relative_to(tmp_path / "cache" / "heads")
    assert load_head(path).path == head.path  # found again by the original's checksum


def test_a_pth_head_is_found_by_name_in_the_models_folder(tmp_path, references):
    from cityclf_core import resolve_head

    torch.save(references["waifu-scorer"].state_dict(), tmp_path / "waifu-scorer-v3.pth")
    head = resolve_head("waifu-scorer-v3", search_dirs=[tmp_path], allow_download=False)
    assert head.kind.name == "waifu-scorer" and head.name == "waifu-scorer-v3"


def test_lightning_checkpoints_and_wrapped_keys_load(tmp_path, references):
    sd = references["waifu-scorer"].state_dict()
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"epoch": 3, "global_step": 120, "state_dict": {f"model.{k}": v for k, v in sd.items()}}, path)
    head = load_head(path)
    assert head.kind.name == "waifu-scorer"
    assert torch.equal(head.net.layers[6].running_var, sd["layers.6.running_var"])


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def bad_file(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_bad_pth_files_are_clear_errors_naming_the_file(tmp_path, pth_files, references, capsys):
    sd = references["waifu-scorer"].state_dict()
    whole = pth_files["laion-aesthetic"].read_bytes()
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(illustration(40, 40)).save(folder / "a.png")
    torch.save({"fc.weight": torch.zeros(4, 768), "fc.bias": torch.zeros(4)}, tmp_path / "other.pth")
    torch.save({k: v for k, v in sd.items() if "running" not in k}, tmp_path / "no-stats.pth")
    cases = {
        str(tmp_path / "other.pth"): r"other.pth is not a known head layout: keys fc.bias, fc.weight",
        bad_file(tmp_path, "short.pth", whole[: len(whole) // 2]): r"short.pth could not be read as PyTorch weights",
        bad_file(tmp_path, "evil.pth", pickle.dumps({"layers.0.weight": Evil()}, protocol=2)):
            r"evil.pth holds more than tensors \(pickled code or objects\)",
        str(tmp_path / "no-stats.pth"): r"no-stats.pth: its BatchNorm running statistics are missing "
                                        r"\(layers.10.running_mean",
    }
    for path, message in cases.items():
        with pytest.raises(WeightsError, match=message):
            load_head(path)
        assert not (tmp_path / (path.rsplit("/", 1)[1].rsplit(".", 1)[0] + ".safetensors")).exists()
        code = main(["score", str(folder), "-m", path, "--offline", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and path in err, err
    assert "this must never run" not in capsys.readouterr().out


# ---------------------------------------------------------------- fidelity


@pytest.mark.parametrize("arch", ["laion-aesthetic", "waifu-scorer"])
def test_ratings_match_the_published_forward(arch, heads, references, encoder):
    imgs = images()
    recording = RecordingEncoder(encoder)
    results = ScoringModel().add(heads[arch], recording).score(imgs, batch_size=1000)
    expected = reference_rating(references[arch], torch.cat(recording.outputs))
    got = [r[heads[arch].name] for r in results]
    assert [r.values[0] for r in got] == pytest.approx(expected, abs=TOLERANCE)
    assert max(expected) - min(expected) > 1.0  # the images get different ratings: not a vacuous match
    for r, rating in zip(got, expected):
        assert r.score == pytest.approx(min(max(rating / 10, 0.0), 1.0), abs=TOLERANCE)
        assert r.label == f"{r.values[0]:.1f}/10" and r.views == 1


@pytest.mark.parametrize("arch", ["laion-aesthetic", "waifu-scorer"])
def test_skipping_the_normalisation_changes_the_rating(arch, heads, references, encoder):
    emb = whole_image_embeddings(encoder, images())
    assert not torch.allclose(emb.norm(dim=-1), torch.ones(len(emb)), atol=1e-3)
    ours = heads[arch].predict(emb)[:, 0].tolist()
    raw = reference_rating(references[arch], emb, normalise=False)
    assert ours == pytest.approx(reference_rating(references[arch], emb), abs=TOLERANCE)
    assert max(abs(a - b) for a, b in zip(ours, raw)) > 0.1


def test_the_same_forward_at_768_on_embeddings_alone(heads, references):
    torch.manual_seed(0)
    emb = torch.randn(6, 768) * 3
    emb[2] = 0  # a zero embedding stays zero, as their normalisation leaves it
    for arch, head in heads.items():
        assert head.predict(emb)[:, 0].tolist() == pytest.approx(reference_rating(references[arch], emb),
                                                                abs=TOLERANCE)


# ---------------------------------------------------------------- one CLIP pass, the store, the command


def test_cityaesthetics_laion_and_waifu_share_one_clip_pass(heads, score_head, encoder):
    counting = CountingEncoder(encoder)
    model = ScoringModel().add(score_head, counting)
    for head in heads.values():
        model.add(head, counting)
    assert len(model.groups()) == 1
    imgs = images()
    results = model.score(imgs, batch_size=1000)
    assert counting.calls == [len(imgs)]  # one forward, one view per image, for all three heads
    alone = ScoringModel().add(score_head, encoder).score(imgs)
    for r, a in zip(results, alone):
        assert set(r) == {score_head.name, *(h.name for h in heads.values())}
        assert r[score_head.name].score == pytest.approx(a[score_head.name].score, abs=TOLERANCE)


def test_score_store_rescore_and_query_from_the_command(tmp_path, pth_files, score_head_path, tiny_clip_dir,
                                                        capsys, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(images()):
        Image.fromarray(img.numpy()).save(folder / f"i{i}.png")
    db = tmp_path / "s.db"
    heads = ["-m", str(score_head_path), "-m", str(pth_files["laion-aesthetic"]), "-m", str(pth_files["waifu-scorer"])]
    common = ["--clip", str(tiny_clip_dir), "--format", "jsonl", "--no-progress"]
    assert main(["score", str(folder), "--store", str(db), *heads, *common]) == 0
    direct = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    laion = [r for r in direct if r["model"] == "sac+logos+ava1-l14-linearMSE"]
    assert len(laion) == 5 and all(set(r) == {"path", "model", "score", "rating", "label"} for r in laion)
    assert all(r["label"] == f"{r['rating']:.1f}/10" for r in laion)
    with EmbeddingStore(db) as store:
        assert {s["model"].kind for s in store.scores().values()} == {"waifu-scorer"}

    def no_clip(*a, **k):
        raise AssertionError("scoring stored embeddings must not load CLIP")

    monkeypatch.setattr(TransformersClipEncoder, "from_folder", no_clip)
    assert main(["score", "--store", str(db), *heads, *common]) == 0
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    key = lambda r: (r["path"], r["model"])  # noqa: E731
    for a, b in zip(sorted(direct, key=key), sorted(again, key=key)):
        assert key(a) == key(b) and a["score"] == pytest.approx(b["score"], abs=TOLERANCE)
    cut = sorted(r["score"] for r in laion)[2]
    assert main(["query", "--store", str(db), "--min", f"sac={cut}", "--format", "jsonl"]) == 0
    kept = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["path"] for r in kept} == {r["path"] for r in laion if r["score"] >= cut}
    rating = sorted(r["rating"] for r in laion)[3]  # a band on the rating itself
    assert main(["query", "--store", str(db), "--min", f"sac:rating={rating}", "--format", "jsonl"]) == 0
    kept = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["path"] for r in kept} == {r["path"] for r in laion if r["rating"] >= rating}


def test_loader_predict_and_show_nodes_take_them(pack, tmp_path, pth_files, score_head_path, tiny_clip_dir,
                                                monkeypatch):
    import shutil
    from importlib import import_module

    models = tmp_path / "models"
    models.mkdir()
    for path in (score_head_path, *pth_files.values()):
        shutil.copy(path, models / path.name)
    monkeypatch.setenv("CITYCLF_MODELS", str(models))
    nodes = import_module("cityclf_pack.nodes")
    choices = nodes.CityClfLoader.INPUT_TYPES()["required"]["head"][0]
    assert {"sac+logos+ava1-l14-linearMSE.pth", "model.pth"} <= set(choices)
    model = None
    for name in (score_head_path.name, "sac+logos+ava1-l14-linearMSE.pth", "model.pth"):
        model = nodes.CityClfLoader().load(head=name, clip=str(tiny_clip_dir), add_to=model)["result"][0]
    assert len(model.groups()) == 1
    batch = torch.stack([torch.from_numpy(illustration(80, 64, s)).float() / 255 for s in range(2)])
    out = nodes.CityClfPredict().predict(model=[model], images=[batch], tiling=["auto"], combine=["mean"],
                                         never_upscale=[False], head=["model"])
    scores, labels, payload = out["result"]
    first = json.loads(payload[0])
    assert set(first) == {"TestAesthetics-v1", "sac+logos+ava1-l14-linearMSE", "model"}
    waifu = first["model"]
    assert waifu["arch"] == "waifu-scorer" and waifu["label"] == f"{waifu['rating']:.1f}/10" == labels[0]
    assert scores[0] == pytest.approx(waifu["score"]) and waifu["score"] == pytest.approx(waifu["rating"] / 10)
    from cityclf_pack.nodes.show import lines_for

    assert f"model: {waifu['label']} (score {waifu['score']:.2f})" in lines_for(0, None, None, payload)


def test_models_lists_them_with_urls_and_downloads_nothing(tmp_path, capsys, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("cityclf models must not download")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    assert main(["models", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "LAION-Aesthetic-v2 (sac+logos+ava1-l14-linearMSE.pth)\n  laion-aesthetic: LAION aesthetic rating" in out
    assert ("download by hand: https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
            "sac+logos+ava1-l14-linearMSE.pth") in out
    assert ("waifu-scorer-v3 (waifu-scorer-v3.pth)\n  waifu-scorer: waifu-scorer anime rating 0..10 (score = "
            "rating / 10), for anime illustrations\n  CLIP: openai/clip-vit-large-patch14, whole image\n"
            "  download by hand: https://huggingface.co/Eugeoter/waifu-scorer-v3/resolve/main/model.pth "
            "(save it as waifu-scorer-v3.pth)\n") in out
    assert "md5 b1047fd767a00134b8fd6529bf19521a" in out
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("arch", ["laion-aesthetic", "waifu-scorer"])
def test_they_train_into_their_own_layout(arch, tmp_path, tiny_clip_dir, capsys):
    data = tmp_path / "data"
    for rating, seed in (("2", 0), ("8.5", 20)):
        (data / f"{rating}_set").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(illustration(40 + i, 40, seed + i)).save(data / f"{rating}_set" / f"{i}.png")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"model:\n  base: Mine\n  rev: v1\n  arch: {arch}\n"
                   "train:\n  lr: 0.001\n  steps: 24\n  batch: 4\n  val_fraction: 0.2\n  eval_every: 6\n  save_every: 6\n")
    code = main(["train", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--clip", str(tiny_clip_dir), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    weights = tmp_path / "out" / "Mine-v1.safetensors"
    reference = (LaionMLP if arch == "laion-aesthetic" else WaifuMLP)()
    tensors = load_file(str(weights))
    assert set(tensors) == set(reference.state_dict())  # their layout, BatchNorm statistics included
    reference.load_state_dict(tensors)
    if arch == "waifu-scorer":
        assert int(tensors["layers.2.num_batches_tracked"]) > 0
        assert not torch.equal(tensors["layers.2.running_mean"], torch.zeros(2048))
    head = load_head(weights)
    assert head.kind.name == arch
    torch.manual_seed(1)
    emb = torch.randn(3, 768)
    assert head.predict(emb)[:, 0].tolist() == pytest.approx(reference_rating(reference, emb), abs=TOLERANCE)
    weights.with_name("Mine-v1.config.json").unlink()  # the weights alone: recognised by their layout
    assert load_head(weights).kind.name == arch


def test_waifu_scorer_training_needs_batches_of_two(tmp_path, tiny_clip_dir, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("model:\n  base: Mine\n  rev: v1\n  arch: waifu-scorer\ntrain:\n  steps: 10\n  batch: 1\n")
    (tmp_path / "data" / "5").mkdir(parents=True)
    code = main(["train", "--config", str(cfg), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                 "--clip", str(tiny_clip_dir), "--no-progress"])
    assert code == 2 and "train.batch must be at least 2 for a waifu-scorer head" in capsys.readouterr().err
