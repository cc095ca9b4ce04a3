"""The embedding store and dataset jobs: reuse, change detection, identity, kill-and-resume, fast re-scoring;
the store's protocol, its schema versions."""

from __future__ import annotations

import ast
import inspect
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
from cityclf_core.dataset.stored_model import load_stored_model
from cityclf_core.loading.clips import clip_identity
from cityclf_core.store import EmbeddingStore, Store, StoredScore


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


def test_export_writes_one_npz_per_clip_and_policy(tmp_path, tiny_clip_dir, class_head_path):
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


# ---------------------------------------------------------------- the protocol, schema versions

#: modules outside store/ that may use sqlite3: the Pixiv metadata database, which is not an embedding store
OWN_SQLITE = {"pixiv/ingest.py", "pixiv/records.py", "pixiv/synth.py"}


def _package_modules():
    """(path relative to the package, parsed module) for every module of cityclf_core and the node pack outside store/."""
    for root in (ROOT / "cityclf_core", ROOT / "nodes"):
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if root.name == "cityclf_core" and rel.startswith("store/"):
                continue
            yield rel, ast.parse(path.read_text(encoding="utf-8"))


def _methods(cls) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


def test_every_store_method_called_is_in_the_protocol_with_the_sqlite_signature():
    store_methods, declared = _methods(EmbeddingStore), _methods(Store)
    called: dict[str, list[str]] = {}
    for rel, tree in _package_modules():
        for node in ast.walk(tree):  # any call of a name the store has counts (a false match only asks for more)
            if isinstance(node, ast.Attribute) and node.attr in store_methods:
                called.setdefault(node.attr, []).append(f"{rel}:{node.lineno}")
    undeclared = {name: where for name, where in called.items() if name not in declared}
    assert not undeclared, f"store methods called outside store/ but not declared in store/protocol.py: {undeclared}"
    assert {"find_encoder", "put_embedding", "select_paths", "embeddings_by_content", "record_import"} <= set(called)
    for name in declared:
        assert name in store_methods, f"the SQLite store lacks protocol method {name}"
        mine, promised = inspect.signature(getattr(EmbeddingStore, name)), inspect.signature(getattr(Store, name))
        assert mine == promised, f"{name}: the SQLite store has {mine}, the protocol {promised}"


def test_nothing_outside_the_store_runs_sql_on_it():
    for rel, tree in _package_modules():
        imports = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "sqlite3" not in imports or rel in OWN_SQLITE, f"{rel} uses sqlite3"
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "db"], \
            f"{rel} reaches into a store's connection"


def test_the_store_is_split_into_small_modules_and_classes():
    for path in sorted((ROOT / "cityclf_core" / "store").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 400, f"{path} has grown past 400 lines: split it by concern"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno - node.lineno < 300, f"{path}: class {node.name} is over 300 lines"


def test_embeddings_by_content_answer_like_embeddings_by_path(tmp_path):
    emb = {"c1": np.ones((1, 4), np.float32), "c2": np.arange(8, dtype=np.float32).reshape(2, 4)}
    with EmbeddingStore(tmp_path / "s.db") as store:
        row = store.register_encoder("clip-a", "a", "/clips/a", 32, 4)
        with store.transaction():
            for i, (content, e) in enumerate(emb.items()):
                store.put_file(f"/d/{i}.png", 1, 1, content)
                store.put_embedding(content, row.id, "whole", e)
    with EmbeddingStore(tmp_path / "s.db", create=False, readonly=True) as store:
        got = store.embeddings_by_content(["c2", "gone", "c1"], row, "whole")
        assert set(got) == {"c1", "c2"}
        for content, e in emb.items():
            np.testing.assert_array_equal(got[content], e)
        _, _, stacked, _ = store.read_embeddings(["/d/0.png", "/d/1.png"], row, "whole")
        np.testing.assert_array_equal(stacked, np.concatenate([got["c1"], got["c2"]]))
        assert store.embeddings_by_content(["c1"], row, "tiles:64:1536:up") == {}


def test_the_sqlite_store_meets_the_store_protocol(tmp_path):
    with EmbeddingStore(tmp_path / "s.db") as store:
        assert isinstance(store, Store)


def test_a_schema_1_store_opens_and_answers_the_same(tmp_path):
    db = tmp_path / "old.db"
    with EmbeddingStore(db) as store:
        with store.transaction():
            store.put_scores([("a.png", "Aes", "mean", StoredScore(0.7, "70%", None, "score")),
                              ("a.png", "Cls", "mean", StoredScore(0.4, "Pass", {"Pass": 0.6, "JPEG": 0.4}, "class"))])
    con = sqlite3.connect(db)  # make it a store as schema 1 wrote it: no kind column
    con.execute("ALTER TABLE scores DROP COLUMN kind")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with EmbeddingStore(db, create=False, readonly=True) as store:  # read as it is
        old = store.scores()
    assert old["a.png"]["Aes"] == (0.7, "70%", None, "score")
    assert old["a.png"]["Cls"].kind == "class" and old["a.png"]["Cls"].extra == {"Pass": 0.6, "JPEG": 0.4}
    with EmbeddingStore(db) as store:  # opened for writing: migrated, same answers
        assert store.scores() == old
    assert sqlite3.connect(db).execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)


def test_stores_without_import_records_stay_readable(tmp_path):
    with EmbeddingStore(tmp_path / "old.db") as store:  # a store as earlier versions wrote it
        store.register_encoder("clip-a", "a", "/clips/a", 32, 4)
    with EmbeddingStore(tmp_path / "old.db", create=False, readonly=True) as store:
        assert store.imported_shards() == set() and len(store.encoders()) == 1
