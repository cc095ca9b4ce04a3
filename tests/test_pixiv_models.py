"""Popularity head kinds and networks, streamed training data, the pixiv config."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import cityclf_core
from cityclf_core.errors import ConfigError, WeightsError
from cityclf_core.kinds import get_kind
from cityclf_core.loading.head_files import HeadConfig, load_head_file, save_head
from cityclf_core.pixiv.config import parse_settings
from cityclf_core.pixiv.records import Records
from cityclf_core.scoring.results import HeadResult

KINDS = {"popularity": 1, "popularity-multitask": 6, "popularity-attention": 6}


def config(arch: str, **extra) -> HeadConfig:
    return HeadConfig(name="Pop", rev="v1", arch=arch, features=16, hidden=8, outputs=KINDS[arch], extra=extra)


@pytest.mark.parametrize("arch", list(KINDS))
def test_saved_head_loads_back_and_predicts_the_same(tmp_path, arch):
    kind = get_kind(arch)
    torch.manual_seed(0)
    net = kind.build_net(config(arch))
    net.train()
    net.logits(torch.randn(32, 16) * 3 + 1)  # collect input statistics, as training does
    net.eval()
    quantiles = (np.linspace(0, 1, 101) ** 2).tolist()  # training scores: s = (p / 100)^2 at percentile p
    path = save_head(net, config(arch, target={"name": "weighted_log", "scalers": {"weighted": [0, 1]}},
                                 quantiles=quantiles), tmp_path / "Pop-v1.safetensors")
    head = cityclf_core.load_head(path)
    assert head.kind is kind and head.config.extra["target"]["scalers"] == {"weighted": [0, 1]}
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected = kind.activate(net.logits(x))
    values = head.predict(x)
    torch.testing.assert_close(values[:, :-1], expected[:, :-1])
    assert torch.isnan(expected[:, -1]).all()  # a net without quantiles has no percentile
    assert ((values[:, 0] >= 0) & (values[:, 0] <= 1)).all()
    assert head.labels[-1] == "percentile"
    torch.testing.assert_close(values[:, -1], 100 * values[:, 0].sqrt(), atol=0.6, rtol=0)
    if KINDS[arch] == 6:
        assert "percentile" not in kind.probs(HeadResult("Pop-v1", kind, head.labels, values[0].tolist(), 0.5, 1))
        torch.testing.assert_close(values[:, 1:4].sum(1), torch.ones(5))
        torch.testing.assert_close(values[:, 4:6].sum(1), torch.ones(5))
    result = HeadResult("Pop-v1", kind, head.labels, values[0].tolist(), float(values[0, 0]), 1)
    assert result.label == f"{int(round(float(values[0, -1])))}/100"  # the percentile among training works
    assert kind.jsonl_fields(result)["percentile"] == pytest.approx(float(values[0, -1]))
    old = HeadResult("Pop-v1", kind, head.labels, [*values[0, :-1].tolist(), float("nan")], float(values[0, 0]), 1)
    assert old.label == f"{int(round(1 + 99 * old.score))}/100"  # heads saved without quantiles
    assert result.value_of("popularity") == result.score
    score, label, extra = kind.to_stored(result)
    back = kind.from_stored("Pop-v1", score, label, extra)
    assert back.labels == result.labels and back.values == pytest.approx(result.values) and back.label == label
    assert kind.csv_columns("Pop", result.labels)[:2] == ["Pop:label", "Pop:score"]
    assert len(kind.csv_columns("Pop", result.labels)) == len(kind.csv_cells(result))


def test_a_head_of_another_kind_is_refused(tmp_path):
    net = get_kind("popularity-multitask").build_net(config("popularity-multitask"))
    path = save_head(net, config("popularity-multitask"), tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match="not a popularity-attention head"):
        load_head_file(path, config=config("popularity-attention"))
    with pytest.raises(WeightsError, match="has 1 output"):
        HeadConfig(name="x", arch="popularity", outputs=6)


def test_uncertainty_weighted_loss():
    import math

    kind = get_kind("popularity-multitask")
    net = kind.build_net(config("popularity-multitask"))
    net.train()
    logits = torch.randn(8, 7, requires_grad=True)
    targets = torch.tensor([[0.2, 0, 1], [0.9, 2, 0]] * 4)
    mse = torch.nn.functional.mse_loss(torch.sigmoid(logits[:, 0]), targets[:, 0])
    ce_s = torch.nn.functional.cross_entropy(logits[:, 1:4], targets[:, 1].long())
    ce_a = torch.nn.functional.cross_entropy(logits[:, 4:6], targets[:, 2].long())
    loss = kind.train_loss(net, logits, targets, None)
    # the first batch sets each log-variance where its term is smallest: log MSE, log(2 CE)
    z0 = [math.log(mse.item()), math.log(2 * ce_s.item()), math.log(2 * ce_a.item())]
    torch.testing.assert_close(net.log_vars.detach(), torch.tensor(z0))
    assert loss.item() == pytest.approx(1.5 + 0.5 * sum(z0), abs=1e-5)
    loss.backward()
    assert net.log_vars.grad is not None and net.log_vars.grad.abs().max() < 1e-5  # at the minimum
    with torch.no_grad():
        net.log_vars.copy_(torch.tensor([1.0, -1.0, 0.5]))
    weighted = kind.train_loss(net, logits, targets, None)  # set once: later batches use the learned values
    e = torch.exp
    expected = (0.5 * e(torch.tensor(-1.0)) * mse + 0.5 + e(torch.tensor(1.0)) * ce_s - 0.5
                + e(torch.tensor(-0.5)) * ce_a + 0.25)
    torch.testing.assert_close(weighted, expected)
    # the log-variances have their own rate and no weight decay
    cfg = type("C", (), {"lr": 1e-3, "uncertainty_lr": 0.05})()
    groups = kind.param_groups(net, cfg)
    assert groups[1]["params"][0] is net.log_vars and groups[1]["weight_decay"] == 0 and groups[1]["lr"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_pairwise_loss_ranks_within_the_batch():
    from cityclf_core.kinds.popularity import pairwise_loss, popularity_loss

    s = torch.tensor([0.1, 0.5, 0.9])
    good, bad = torch.tensor([-2.0, 0.0, 2.0]), torch.tensor([2.0, 0.0, -2.0])
    assert pairwise_loss(good, s) < 0.2 < 1.0 < pairwise_loss(bad, s)
    expected = torch.nn.functional.softplus(-torch.tensor([2.0, 4.0, 2.0])).mean()  # pairs (1,0), (2,0), (2,1)
    torch.testing.assert_close(pairwise_loss(good, s), expected)
    assert pairwise_loss(good, torch.full((3,), 0.5)) == 0  # no ordered pair
    assert pairwise_loss(good + 5, s) == pytest.approx(pairwise_loss(good, s).item())  # only order matters
    mse = type("C", (), {"loss": "mse"})()
    torch.testing.assert_close(popularity_loss(good, s, mse), torch.nn.functional.mse_loss(torch.sigmoid(good), s))


def test_folder_training_of_a_popularity_head_points_to_pixiv_train():
    from cityclf_core.train import parse_config

    with pytest.raises(ConfigError, match="cityclf pixiv train"):
        parse_config({"model": {"base": "x", "arch": "popularity"}})


# ---------------------------------------------------------------- streamed training data


@pytest.fixture
def small_store(tmp_path):
    from cityclf_core.store import EmbeddingStore

    rng = np.random.default_rng(0)
    n, dim = 90, 16
    q = rng.uniform(size=n)
    paths = [str(tmp_path / f"img{i}.png") for i in range(n)]
    with EmbeddingStore(tmp_path / "e.db") as store:
        row = store.register_encoder("ident", "tiny", "tiny-clip", 32, dim)
        with store.transaction():
            for i, p in enumerate(paths):
                content = hashlib.sha256(p.encode()).hexdigest()
                store.put_file(p, 1, 1, content)
                store.put_embedding(content, row.id, "whole", (rng.normal(size=(1, dim)) + q[i]).astype(np.float32))
    views = np.exp(5 + 2 * q)
    rec = Records(np.array([f"{i}_p0" for i in range(n)], dtype=object), np.array(paths, dtype=object),
                  np.arange(n), np.arange(n) % 9, np.round(views * 0.1), np.round(views), rng.choice([2, 4, 6], n),
                  rng.uniform(size=n) < 0.3, np.full(n, 3), np.ones(n, dtype=np.int64), np.full(n, 1.6e9),
                  np.full(n, 1.7e9))
    return tmp_path, rec


def test_streamed_and_in_memory_training_give_the_same_head(small_store):
    from safetensors.torch import load_file

    from cityclf_core.pixiv.config import PixivSettings
    from cityclf_core.pixiv.splits import make_split
    from cityclf_core.pixiv.training import fit_and_train, load_data, views_of

    tmp, rec = small_store
    heads = {}
    for stream in ("yes", "no"):
        settings = PixivSettings(source="test", dataset=tmp, store=tmp / "e.db", clip="tiny-clip", stream=stream,
                                 width=8, epochs=3, batch=16)
        data = load_data(settings, records=rec)
        split = make_split("artist", data.records, seed=0)
        result, target = fit_and_train(settings, data, split, "popularity-multitask", tmp / stream,
                                       log=lambda m: None)
        heads[stream] = load_file(str(result.weights))
        sidecar = json.loads(result.config.read_text(encoding="utf-8"))
        assert sidecar["target"] == json.loads(json.dumps(target.to_dict()))
    assert heads["yes"].keys() == heads["no"].keys()
    for k in heads["yes"]:
        torch.testing.assert_close(heads["yes"][k], heads["no"][k])
    from cityclf_core.store import EmbeddingStore

    views = views_of(data, np.array([5, 2, 5]))
    rows = views.rows(np.array([0, 1, 2]))
    views.close()
    with EmbeddingStore(tmp / "e.db", create=False) as store:
        _, _, stored, _ = store.read_embeddings([data.records.image[i] for i in (5, 2, 5)], data.encoder, "whole")
    np.testing.assert_array_equal(rows, stored)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("change, message", [
    ({"data": {"dataset": "d", "store": "s.db"}}, "data.clip is required"),
    ({"data": {"split": "by-luck"}}, "data.split must be one of artist, time, random"),
    ({"target": {"name": "likes"}}, "target.name must be one of"),
    ({"model": {"arch": "score"}}, "model.arch must be one of popularity"),
    ({"train": {"epochs": 3, "steps": 100}}, "not both"),
    ({"train": {"batch": 1}}, "batch must be at least 2"),
    ({"train": {"momentum": 0.9}}, "unknown key.*train.momentum"),
    ({"eval": {"models": ["popularity", "nope"]}}, "eval.models takes some of"),
    ({"target": {"name": "weighted_log_ratio", "alpha": 0.5, "beta": 0.3, "gamma": 0.3}}, "must sum to 1"),
    ({"target": {"alpha": -0.2}}, "target.alpha must be between 0 and 1"),
    ({"target": {"name": "weighted_log", "gamma": 0.3}}, "target.beta and target.gamma belong to"),
    ({"target": {"per_artist": "sometimes"}}, "target.per_artist must be yes or no"),
    ({"train": {"loss": "hinge"}}, "train.loss must be one of mse, pairwise"),
    ({"train": {"uncertainty_lr": 0}}, "train.uncertainty_lr must be positive"),
    ({"eval": {"losses": ["mse", "l1"]}}, "eval.losses takes some of"),
])
def test_config_errors_are_clear(tmp_path, change, message):
    data = {"data": {"dataset": "d", "store": "s.db", "clip": "c"}}
    for section, body in change.items():
        data[section] = body if section != "data" or "dataset" in body else {**data["data"], **body}
    with pytest.raises(ConfigError, match=message):
        parse_settings(data, "pixiv.yaml", tmp_path)


def test_config_paths_are_taken_from_the_config_folder(tmp_path):
    (tmp_path / "clip").mkdir()
    s = parse_settings({"data": {"dataset": "d", "store": "s.db", "clip": "clip"}}, "x.yaml", tmp_path)
    assert s.dataset == tmp_path / "d" and s.store == tmp_path / "s.db" and s.clip == str(tmp_path / "clip")
    s = parse_settings({"data": {"dataset": "d", "store": "s.db", "clip": "openai/clip-vit-large-patch14-336"}},
                       "x.yaml", tmp_path)
    assert s.clip == "openai/clip-vit-large-patch14-336" and s.epochs == 40.0


def test_pairwise_training_and_what_a_trained_head_records(small_store):
    from cityclf_core.pixiv.config import PixivSettings
    from cityclf_core.pixiv.splits import make_split
    from cityclf_core.pixiv.training import fit_and_train, ids_digest, load_data

    tmp, rec = small_store
    settings = PixivSettings(source="test", dataset=tmp, store=tmp / "e.db", clip="tiny-clip", width=8, epochs=3,
                             batch=16, loss="pairwise", target="weighted_log_ratio", alpha=0.5, beta=0.2, gamma=0.3)
    data = load_data(settings, records=rec)
    split = make_split("artist", data.records, seed=0)
    result, target = fit_and_train(settings, data, split, "popularity-multitask", tmp / "pw", log=lambda m: None)
    sidecar = json.loads(result.config.read_text(encoding="utf-8"))
    assert sidecar["loss"] == "pairwise" and sidecar["target"]["name"] == "weighted_log_ratio"
    assert sidecar["split"]["test_ids_sha256"] == ids_digest(data.records.illust_id[split.test])
    assert len(sidecar["quantiles"]) == 101
    u = json.loads(result.metrics_path.read_text(encoding="utf-8"))["uncertainty"]
    assert u["tasks"] == ["popularity", "sanity", "ai"] and len(u["log_vars"]) == len(u["balance"]) == 3


def test_the_docs_table_is_generated_from_its_ablation_json():
    from pathlib import Path

    from cityclf_core.pixiv.ablation import format_table

    docs = Path(__file__).resolve().parents[1] / "docs"
    table = format_table(json.loads((docs / "popularity" / "ablation.json").read_text(encoding="utf-8")))
    assert table in (docs / "popularity.md").read_text(encoding="utf-8")
