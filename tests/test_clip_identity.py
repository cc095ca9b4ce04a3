"""A CLIP's identity covers every weight: two CLIPs that differ in one layer are two CLIPs everywhere (the
fingerprint, the store, a Ray worker's check), and stores made under the earlier identity keep working."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from conftest import illustration
from PIL import Image
from safetensors.torch import load_file, save_file

from cityclf_core.cli import main
from cityclf_core.errors import CityClfError, StoreError
from cityclf_core.loading import clips, fingerprints
from cityclf_core.store import EmbeddingStore

LAYER = "vision_model.encoder.layers.1.mlp.fc1.weight"


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def two_clips(tmp_path, tiny_clip_dir, monkeypatch):
    """A copy of the tiny CLIP, and another copy differing only in one encoder layer's weight."""
    monkeypatch.setenv("CITYCLF_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "clip-a", tmp_path / "clip-b"
    shutil.copytree(tiny_clip_dir, a)
    shutil.copytree(tiny_clip_dir, b)
    weights = load_file(b / "model.safetensors")
    weights[LAYER] = weights[LAYER].clone()
    weights[LAYER][0, 0] += 0.5
    save_file(weights, b / "model.safetensors", metadata={"format": "pt"})
    clips.forget_encoders()
    yield a, b
    clips.forget_encoders()


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(illustration(60 + 10 * i, 50, 70 + i)).save(folder / f"p{i}.png")
    return folder


def test_clips_differing_in_one_layer_have_different_identities(two_clips):
    a, b = two_clips
    assert fingerprints.legacy_fingerprint(a) == fingerprints.legacy_fingerprint(b)  # what the old identity missed
    assert fingerprints.clip_fingerprint(a) != fingerprints.clip_fingerprint(b)
    assert fingerprints.folder_fingerprint(a) == fingerprints.clip_fingerprint(a)
    # what a Ray worker compares with the driver's: the identity of the encoder it loads
    enc_a, enc_b = clips.load_encoder(str(a), "cpu", "fp32"), clips.load_encoder(str(b), "cpu", "fp32")
    assert enc_a.identity == clips.clip_identity(str(a)) and enc_b.identity == clips.clip_identity(str(b))
    assert enc_a.identity != enc_b.identity
    # the same weights elsewhere are the same CLIP
    c = a.parent / "clip-c"
    shutil.copytree(a, c)
    assert fingerprints.clip_fingerprint(c) == enc_a.identity


def test_a_ray_worker_with_the_other_clip_is_refused(two_clips, tmp_path):
    pytest.importorskip("pyarrow")
    from cityclf_core.dataset.passes import ModelSpec
    from cityclf_core.engines.ray_data import ClipWorker

    a, b = two_clips
    expected = [(e.identity, t.clip.key) for t in ModelSpec(clip=str(a)).load("cpu")[1] for e in [t.encoder]]
    output = {"encoders": [], "names": [], "parts": str(tmp_path)}  # where its rows would go
    assert ClipWorker(ModelSpec(clip=str(a)), "cpu", expected, None, **output).failed is None  # the driver's CLIP
    # a worker keeps its start-up failure and raises it on its first batch (one error reaches the driver)
    other = ClipWorker(ModelSpec(clip=str(b)), "cpu", expected, None, **output)
    with pytest.raises(CityClfError, match="not the driver's"):
        other(None)


def test_the_store_never_reuses_one_clips_embeddings_for_the_other(two_clips, photos, tmp_path, capsys):
    a, b = two_clips
    db = tmp_path / "s.db"
    code, _, err = run(["embed", photos, "--store", db, "--clip", a, "--no-progress"], capsys)
    assert code == 0 and "3 embedded" in err, err
    with EmbeddingStore(db) as store, pytest.raises(StoreError, match="no embeddings of CLIP"):
        store.find_encoder(clips.clip_identity(str(b)), clips.source_name(b))
    code, _, err = run(["embed", photos, "--store", db, "--clip", b, "--no-progress"], capsys)
    assert code == 0 and "3 embedded, 0 already in the store" in err, err
    with EmbeddingStore(db) as store:
        assert {e.identity for e in store.encoders()} == {clips.clip_identity(str(a)), clips.clip_identity(str(b))}


def test_a_store_made_under_the_old_identity_is_renamed_on_first_use(two_clips, photos, tmp_path, monkeypatch,
                                                                     capsys):
    a, _ = two_clips
    db = tmp_path / "old.db"
    # the old code path: the store's CLIP named by the old identity, remembered in an old-style cache entry
    old = fingerprints.legacy_fingerprint(a)
    monkeypatch.setenv("CITYCLF_CACHE", str(tmp_path / "old-cache"))
    monkeypatch.setattr(fingerprints, "folder_fingerprint", fingerprints.legacy_fingerprint)
    code, _, err = run(["embed", photos, "--store", db, "--clip", a, "--no-progress"], capsys)
    assert code == 0 and "3 embedded" in err, err
    monkeypatch.undo()
    with EmbeddingStore(db) as store:
        assert [e.identity for e in store.encoders()] == [old]
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("CITYCLF_CACHE", str(cache))
    (cache / "fingerprints.json").write_text(json.dumps(
        {str(a.resolve()): {"files": fingerprints.signature(a.resolve()), "fingerprint": old}}))
    clips.forget_encoders()
    fingerprints._PAIRS.clear()
    new = fingerprints.clip_fingerprint(a)
    assert new != old  # an entry remembered by the old code is not taken for the new identity
    fingerprints._PAIRS.clear()  # as in a new process: the pair comes from the cache file

    # a reader of a read-only store accepts the old row under the new identity, and changes nothing
    with EmbeddingStore(db, create=False, readonly=True) as store:
        row = store.find_encoder(new, clips.source_name(a))
        assert row.identity == new and row.id == store.encoders()[0].id
        assert [e.identity for e in store.encoders()] == [old]
    # the first writer renames the row, once, and every embedding is reused
    code, _, err = run(["embed", photos, "--store", db, "--clip", a, "--no-progress"], capsys)
    assert code == 0 and "3 already in the store" in err, err
    assert err.count(f"was {old}") == 1, err
    with EmbeddingStore(db) as store:
        assert [e.identity for e in store.encoders()] == [new]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 3
    # a record made by the old code (a head's, naming the old identity) still finds the renamed row
    with EmbeddingStore(db) as store:
        assert store.find_encoder(old, clips.source_name(a)).identity == new


def test_a_head_trained_under_the_old_identity_still_finds_and_accepts_its_clip(two_clips, caplog):
    from types import SimpleNamespace

    from cityclf_core.loading.clip_records import ClipRecord, check_clip

    a, b = two_clips
    rec = ClipRecord(source=str(a), identity=fingerprints.legacy_fingerprint(a), folder=a.name)
    head = SimpleNamespace(name="Old", config=SimpleNamespace(extra={"clip": rec.to_dict()}))
    assert clips.find_recorded_clip(head, rec, [a.parent]) == str(a)
    encoder = clips.load_encoder(str(a), "cpu", "fp32")
    with caplog.at_level("WARNING", logger="cityclf"):
        check_clip(head, encoder)
        assert not caplog.records
        check_clip(head, SimpleNamespace(identity="0" * 16, source=str(b), name="other"))
        assert "may mean nothing" in caplog.text
