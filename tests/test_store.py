"""The embedding store and dataset jobs: reuse, change detection, identity, kill-and-resume, fast re-scoring."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import kill_points
import numpy as np
import pytest
import torch
from conftest import ROOT, illustration
from PIL import Image

from cityclf_core import ScoringModel, StoreError, TransformersClipEncoder
from cityclf_core.cli import main
from cityclf_core.dataset import clip_passes, embed_files, score_store
from cityclf_core.loading import clip_identity, load_stored_model
from cityclf_core.store import EmbeddingStore


def write_images(folder, n, size=(120, 90), start=0):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(illustration(size[0] + i % 7, size[1], i)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def model(encoder, score_head, class_head):
    encoder.source = "test-clip"
    return ScoringModel().add(score_head, encoder).add(class_head, encoder)


def test_embed_then_rerun_computes_nothing(tmp_path, model):
    paths = write_images(tmp_path / "imgs", 6)
    with EmbeddingStore(tmp_path / "s.db") as store:
        targets = clip_passes(model)
        assert [t.key for t in targets] == ["whole", "tiles:64:1536:up"]
        first = embed_files(store, targets, paths)
        assert (first.embedded, first.reused, first.views) == (6, 0, 6 + 30)
        again = embed_files(store, targets, paths)
        assert (again.embedded, again.reused, again.views) == (0, 6, 0)
        assert store.count_embeddings() == 12


def test_changed_touched_and_duplicate_files(tmp_path, model):
    paths = write_images(tmp_path / "imgs", 3)
    with EmbeddingStore(tmp_path / "s.db") as store:
        targets = clip_passes(model)
        embed_files(store, targets, paths)
        os.utime(paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: same bytes
        Image.fromarray(illustration(130, 90, 99)).save(paths[1])  # changed content
        dup = tmp_path / "imgs" / "copy.png"
        dup.write_bytes(open(paths[2], "rb").read())  # a duplicate under a new name
        report = embed_files(store, targets, [*paths, str(dup)])
        assert (report.embedded, report.reused) == (1, 3)
        assert report.views == 6  # only the changed file went through CLIP (1 whole + 5 tiles)
        assert store.file(str(dup)).content == store.file(paths[2]).content
        assert store.file(paths[0]).mtime_ns == os.stat(paths[0]).st_mtime_ns


def test_scores_from_the_store_equal_direct_scores_without_loading_clip(tmp_path, model, monkeypatch):
    paths = write_images(tmp_path / "imgs", 5)
    with EmbeddingStore(tmp_path / "s.db") as store:
        embed_files(store, clip_passes(model), paths)
        direct = model.score([torch.from_numpy(np.array(Image.open(p))) for p in paths])

        def no_clip(*a, **k):
            raise AssertionError("scoring from the store must not load CLIP")

        monkeypatch.setattr(TransformersClipEncoder, "from_folder", no_clip)
        stored_model = ScoringModel()
        from cityclf_core.store import StoredEncoder

        row = store.encoders()[0]
        for b in model.bindings:
            stored_model.add(b.head, StoredEncoder(row), b.policy)
        (results, missing), = list(score_store(store, stored_model))
        assert missing == []
        assert [p for p, _ in results] == sorted(paths)
        by_path = dict(results)
        for p, d in zip(paths, direct):
            for name in d:
                assert by_path[p][name].values == pytest.approx(d[name].values, abs=1e-5)
                assert by_path[p][name].views == d[name].views


def test_store_refuses_other_models(tmp_path, tiny_clip_dir, tiny_clip_dir_b, score_head_path):
    images = write_images(tmp_path / "imgs", 2)
    db = tmp_path / "s.db"
    assert main(["embed", str(tmp_path / "imgs"), "--store", str(db), "-m", str(score_head_path),
                 "--clip", str(tiny_clip_dir), "--no-progress"]) == 0
    with EmbeddingStore(db) as store:
        with pytest.raises(StoreError, match="has no embeddings of CLIP"):
            load_stored_model([str(score_head_path)], store, clip=str(tiny_clip_dir_b))
        assert len(store.encoders()) == 1
        assert store.encoders()[0].identity == clip_identity(str(tiny_clip_dir))
    # the same folder now holding other weights: recognised as another model, not mixed in
    import shutil

    changed = tmp_path / "same-name-clip"
    shutil.copytree(tiny_clip_dir_b, changed)
    with EmbeddingStore(db) as store:
        store.db.execute("UPDATE encoders SET source = ?", (str(changed.resolve()),))
        with pytest.raises(StoreError, match="the model changed"):
            load_stored_model([str(score_head_path)], store, clip=str(changed))
    assert images


def test_identity_without_loading_matches_the_loaded_encoder(tiny_clip_dir, encoder):
    assert clip_identity(str(tiny_clip_dir)) == encoder.identity


def test_export_numpy(tmp_path, tiny_clip_dir, class_head_path):
    write_images(tmp_path / "imgs", 3)
    db = tmp_path / "s.db"
    main(["embed", str(tmp_path / "imgs"), "--store", str(db), "-m", str(class_head_path), "--clip",
          str(tiny_clip_dir), "--no-progress"])
    out = tmp_path / "e.npz"
    assert main(["export", "--store", str(db), "--out", str(out)]) == 0
    data = np.load(out)
    assert data["paths"].shape == (3,) and data["offsets"].tolist() == [0, 5, 10, 15]
    assert data["embeddings"].shape == (15, 768) and data["embeddings"].dtype == np.float32
    assert str(data["policy"]) == "tiles:64:1536:up"


def test_a_store_that_is_not_a_store(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_text("hello")
    with pytest.raises(StoreError, match="not a cityclf store"):
        EmbeddingStore(bad)
    with pytest.raises(StoreError, match="does not exist"):
        EmbeddingStore(tmp_path / "missing.db", create=False)


def _embed_cmd(folder, db, clip, *extra):
    return [sys.executable, "-m", "cityclf_core", "embed", str(folder), "--store", str(db), "--clip", str(clip),
            "--no-tiling", "--batch-size", "1", "--workers", "1", "--no-progress", *extra]


def _count(db, sql="SELECT COUNT(*) FROM files"):
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_kill_and_resume(tmp_path, tiny_clip_dir, sig):
    """Killed (or interrupted) right after its 6th commit, wherever that falls on this machine's clock."""
    n = 40
    write_images(tmp_path / "imgs", n, size=(200, 160))
    db = tmp_path / "s.db"
    cmd = _embed_cmd(tmp_path / "imgs", db, tiny_clip_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(Path(kill_points.__file__)), "commit:6", *cmd[3:]], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert kill_points.wait_stopped_or_exited(proc.pid) is None, "the run finished before its 6th commit"
    kill_points.signal_stopped(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    done = _count(db)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err and "rerun to continue" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert 0 < done < n
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # every recorded file has its embedding: nothing half-written is visible
    orphans = con.execute("SELECT COUNT(*) FROM files f LEFT JOIN embeddings e ON e.content = f.content "
                          "WHERE e.content IS NULL").fetchone()[0]
    con.close()
    assert orphans == 0
    rerun = subprocess.run(_embed_cmd(tmp_path / "imgs", db, tiny_clip_dir), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n} file(s), {n - done} embedded, {done} already in the store" in rerun.stderr
    assert _count(db, "SELECT COUNT(*) FROM embeddings") == n


def test_shards_split_the_same_way_everywhere_and_merge_back(tmp_path, tiny_clip_dir, score_head_path, capsys):
    from cityclf_core.dataset import in_shard

    paths = write_images(tmp_path / "a" / "imgs", 12)
    moved = [p.replace(str(tmp_path / "a"), str(tmp_path / "b")) for p in paths]
    for k in range(3):  # the split depends on paths relative to the input root, not where it is mounted
        assert [in_shard(p, [tmp_path / "a"], (k, 3)) for p in paths] == \
               [in_shard(p, [tmp_path / "b"], (k, 3)) for p in moved]
    assert sum(in_shard(p, [tmp_path / "a"], (k, 3)) for p in paths for k in range(3)) == 12
    stores = []
    for k in range(3):
        db = tmp_path / f"shard{k}.db"
        assert main(["embed", str(tmp_path / "a"), "--store", str(db), "-m", str(score_head_path), "--clip",
                     str(tiny_clip_dir), "--shard", f"{k}/3", "--no-progress"]) == 0
        stores.append(str(db))
    assert main(["merge", *stores, "--store", str(tmp_path / "all.db")]) == 0
    with EmbeddingStore(tmp_path / "all.db") as merged:
        assert len(merged.files()) == 12 and merged.count_embeddings() == 12 and len(merged.encoders()) == 1
    capsys.readouterr()
    assert main(["embed", str(tmp_path / "a"), "--store", str(tmp_path / "all.db"), "-m", str(score_head_path),
                 "--clip", str(tiny_clip_dir), "--no-progress"]) == 0
    assert "0 embedded, 12 already in the store" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "a"), "--store", str(tmp_path / "x.db"), "--clip", str(tiny_clip_dir),
                 "--shard", "3/3"]) == 2
