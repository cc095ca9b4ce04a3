"""Thresholds relative to your data: HEAD=p80, --top 20%, reference files, the Gate's percentile rules."""

from __future__ import annotations

import json
from importlib import import_module

import numpy as np
import pytest

from cityclf_core.cli import main
from cityclf_core.dataset.percentiles import TopShare, parse_percentile, parse_top
from cityclf_core.errors import ConfigError
from cityclf_core.store import EmbeddingStore
from cityclf_core.store.rows import StoredScore

AES, CLS = "Aes-v1", "Cls-v1"


def make_store(folder, db, n: int, seed: int):
    """A store with `n` files' scores of a score head and a classifier (no CLIP needed), and the files."""
    rng = np.random.default_rng(seed)
    scores = rng.beta(2, 3, n)
    jpeg = rng.uniform(0, 1, n)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with EmbeddingStore(db) as store, store.transaction():
        for i in range(n):
            path = str(folder / f"img{i:03d}.png")
            open(path, "wb").close()
            paths.append(path)
            store.put_file(path, 0, 0, f"{seed:02d}{i:062d}")
            store.put_scores([
                (path, AES, "mean", StoredScore(float(scores[i]), "", None, "score")),
                (path, CLS, "mean", StoredScore(float(jpeg[i]), "JPEG" if jpeg[i] > 0.5 else "Pass",
                                                {"Pass": float(1 - jpeg[i]), "JPEG": float(jpeg[i])}, "class")),
            ])
    return dict(zip(paths, scores)), dict(zip(paths, jpeg))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("pct")
    aes, jpeg = make_store(base / "images", base / "s.db", 57, seed=1)
    other, _ = make_store(base / "other", base / "other.db", 40, seed=2)
    assert main(["percentiles", "--store", str(base / "s.db"), "--out", str(base / "ref.json")]) == 0
    return base, aes, jpeg, other


def query(capsys, *argv) -> tuple[int, list[str], str]:
    code = main(["query", *map(str, argv), "--format", "jsonl"])
    out, err = capsys.readouterr()
    return code, sorted({json.loads(line)["path"] for line in out.splitlines()}), err


def test_reference_file_holds_numpys_percentiles_of_the_stored_scores(data):
    base, aes, jpeg, _ = data
    ref = json.loads((base / "ref.json").read_text())
    grid = np.arange(1001) / 10
    assert ref["heads"][AES]["count"] == len(aes)
    assert ref["heads"][AES]["score"] == pytest.approx(np.percentile(list(aes.values()), grid), abs=0, rel=1e-15)
    # class probabilities are read back through SQLite's JSON parser, which may round the last bit differently
    assert ref["heads"][CLS]["classes"]["JPEG"] == pytest.approx(np.percentile(list(jpeg.values()), grid),
                                                                 abs=0, rel=1e-12)


@pytest.mark.parametrize("p", [0, 20, 80, 87.5, 100])
def test_min_percentile_selects_what_numpy_says(data, capsys, p):
    base, aes, _, _ = data
    cut = np.percentile(list(aes.values()), p)
    want = sorted(path for path, s in aes.items() if s >= cut)
    for extra in ([], ["--reference", base / "ref.json"]):
        code, got, err = query(capsys, "--store", base / "s.db", "--head", AES, "--min", f"{AES}=p{p}", *extra)
        assert code == 0 and got == want, err
    code, got, _ = query(capsys, "--store", base / "s.db", "--head", AES, "--max", f"{AES}=p{p}")
    assert got == sorted(path for path, s in aes.items() if s <= cut)


def test_class_percentile_and_another_store_as_reference(data, capsys):
    base, aes, jpeg, other = data
    cut = np.percentile(list(jpeg.values()), 70)
    code, got, _ = query(capsys, "--store", base / "s.db", "--head", CLS, "--min", f"{CLS}:JPEG=p70")
    assert got == sorted(p for p, v in jpeg.items() if v >= cut)
    cut = np.percentile(list(other.values()), 50)  # the median of the other store
    code, got, _ = query(capsys, "--store", base / "s.db", "--head", AES, "--min", f"{AES}=p50",
                         "--reference", base / "other.db")
    assert got == sorted(p for p, s in aes.items() if s >= cut)


def test_top_share_keeps_the_best_fifth(data, capsys):
    base, aes, _, _ = data
    code, got, _ = query(capsys, "--store", base / "s.db", "--head", AES, "--top", "20%")
    best = sorted(aes, key=aes.get, reverse=True)[: len(aes) // 5]
    assert code == 0 and got == sorted(best)
    assert parse_top("20%") == TopShare(20) and TopShare(20).count(57) == 11 and TopShare(0.1).count(5) == 1
    assert parse_top("7") == 7


@pytest.mark.parametrize("argv, message", [
    (["--min", f"{AES}=p120"], "outside 0 to 100"),
    (["--min", f"{AES}=p-1"], "outside 0 to 100"),
    (["--min", f"{AES}=pnan"], "outside 0 to 100"),
    (["--min", f"{AES}=pabc"], "not a percentile"),
    (["--top", "0%"], "share must be above 0%"),
    (["--top", "150%"], "at most 100%"),
    (["--min", "Nope-v1=p50", "--head", "Nope-v1", "--head", AES, "--reference", "REF"], "has no head Nope-v1"),
    (["--min", f"{AES}=p50", "--reference", "missing.db"], "no such file"),
    (["--min", f"{AES}=p50", "--reference", "BAD"], "not a JSON file"),
])
def test_bad_percentiles_and_references_exit_2(data, capsys, argv, message):
    base = data[0]
    (base / "bad.json").write_text("{not json")
    ref = json.loads((base / "ref.json").read_text())
    del ref["heads"][AES]
    ref["heads"]["Other-v1"] = ref["heads"].pop(CLS)
    (base / "other-heads.json").write_text(json.dumps(ref))
    argv = [str(base / "bad.json") if a == "BAD" else str(base / "ref.json") if a == "REF" else a for a in argv]
    if message == "has no head Nope-v1":  # the store lacks Nope-v1 too: a reference for other heads
        argv = ["--min", f"{AES}=p50", "--head", AES, "--reference", str(base / "other-heads.json")]
        message = f"has no head {AES}"
    try:  # --top and the percentile's form are checked while the options are parsed (a usage error)
        code = main(["query", "--store", str(base / "s.db"), *argv])
    except SystemExit as usage:
        code = usage.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_percentile_parser_refuses_clearly():
    assert parse_percentile("0.5") is None and parse_percentile("p80") == 80.0 and parse_percentile("P99.9") == 99.9
    with pytest.raises(ConfigError, match="outside 0 to 100"):
        parse_percentile("pinf", "--min")


# ---------------------------------------------------------------- the Gate node


@pytest.fixture
def nodes(pack, data, monkeypatch, tmp_path):
    base = data[0]
    models = tmp_path / "models"
    (models / "reference").mkdir(parents=True)
    (models / "reference" / "mydata.json").write_bytes((base / "ref.json").read_bytes())
    monkeypatch.setenv("CITYCLF_MODELS", str(models))
    return import_module("cityclf_pack.nodes")


@pytest.mark.parametrize("p", [30, 80])
def test_gate_with_a_reference_splits_as_query_does(nodes, data, capsys, p):
    import torch

    base, aes, _, _ = data
    assert "mydata.json" in nodes.CityClfGate.INPUT_TYPES()["optional"]["reference"][0]
    _, want, _ = query(capsys, "--store", base / "s.db", "--head", AES, "--min", f"{AES}=p{p}")
    batch = list(aes)[:30]  # a batch: the threshold comes from the reference, not from these 30
    images = torch.zeros(len(batch), 8, 8, 3)
    out = nodes.CityClfGate().gate(images=[images], scores=[aes[b] for b in batch], rule=["at least percentile"],
                                   threshold=[float(p)], upper=[1.0], fail_when_none_pass=[False],
                                   reference=["mydata.json"], reference_head=[AES])
    passed = json.loads(out["result"][6])
    assert sorted(batch[i] for i in passed) == [w for w in want if w in batch]
    assert f"p{p} of {AES} in mydata.json" in out["ui"]["text"][0]
    at_most = nodes.CityClfGate().gate(images=[images], scores=[aes[b] for b in batch], rule=["at most percentile"],
                                       threshold=[float(p)], upper=[1.0], fail_when_none_pass=[False],
                                       reference=["mydata.json"], reference_head=[AES])
    cut = np.percentile(list(aes.values()), p)
    assert json.loads(at_most["result"][6]) == [i for i, b in enumerate(batch) if aes[b] <= cut]


def test_gate_percentile_errors(nodes):
    import torch

    gate = nodes.CityClfGate()
    args = dict(images=[torch.zeros(2, 8, 8, 3)], scores=[0.1, 0.9], rule=["at least percentile"], upper=[1.0],
                fail_when_none_pass=[False])
    with pytest.raises(ConfigError, match="from 0 to 100"):
        gate.gate(threshold=[120.0], **args)
    with pytest.raises(ConfigError, match="several heads"):
        gate.gate(threshold=[50.0], reference=["mydata.json"], **args)
    with pytest.raises(ConfigError, match="has no head Nope"):
        gate.gate(threshold=[50.0], reference=["mydata.json"], reference_head=["Nope"], **args)
    with pytest.raises(ConfigError, match="not in models/cityclassifiers/reference"):
        gate.gate(threshold=[50.0], reference=["gone.json"], **args)
    batch = gate.gate(threshold=[50.0], **args)  # no reference: the batch's own median
    assert json.loads(batch["result"][6]) == [1]
