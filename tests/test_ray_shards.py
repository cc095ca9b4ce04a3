"""--engine ray: the CLIP workers write the shards themselves; the driver gets manifests and imports.

The worker stage is tested in this process (no Ray needed to call it); one Ray test
runs a driver that writes into --shard-dir, kills it after its first shard, and resumes.
The module's data, models, local store and Ray are test_ray_engine's fixtures.
"""

from __future__ import annotations


import numpy as np
import pytest
from conftest import illustration
from PIL import Image
from test_ray_engine import (BAD, N_GOOD, assert_same_embeddings, data, kill_after_first_shard,  # noqa: F401
                             local_store, models, ray_address, run, shard_paths)

from cityclf_core.store import EmbeddingStore


def worker_output(tmp_path, tiny_clip_dir, score_head_path, paths, shard_of, names, parts):
    """A ClipWorker, in this process, on the decoded views of `paths`: (its output table, the targets)."""
    from cityclf_core.dataset.passes import ModelSpec
    from cityclf_core.engines.ray_data import ClipWorker, encoder_meta, known_array, prepare_batch

    pa = pytest.importorskip("pyarrow")
    spec = ModelSpec((str(score_head_path),), str(tiny_clip_dir), dtype="fp32", score=True)
    _, targets = spec.load("cpu")
    batch = pa.table({"path": paths, "shard": pa.array(shard_of, pa.int32()), "seen": [True] * len(paths)})
    views = prepare_batch(batch, [(t.policy, t.encoder.image_size) for t in targets], [known_array(set())], 10**8)
    worker = ClipWorker(spec, "cpu", [(t.encoder.identity, t.clip.key) for t in targets], None,
                        [encoder_meta(t.encoder) for t in targets], names, str(parts))
    return worker(views), targets


def test_a_worker_writes_parts_and_returns_only_manifests(tmp_path, tiny_clip_dir, score_head_path):
    pa = pytest.importorskip("pyarrow")
    from cityclf_core.dataset import embed_files
    from cityclf_core.engines import parquet
    from cityclf_core.engines.ray_cluster import ClusterError
    from cityclf_core.engines.ray_data import MANIFEST, manifest_rows

    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(illustration(40 + 9 * i, 32, i)).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    paths.append(str(tmp_path / "bad.png"))
    shards = tmp_path / "shards"
    parts = parquet.parts_folder(shards, "run1")
    parts.mkdir(parents=True)
    # one batch crossing two shards: each gets a part of its own rows
    out, targets = worker_output(tmp_path, tiny_clip_dir, score_head_path, paths, [0, 0, 0, 1, 1, 1],
                                 ["shard-a", "shard-b"], parts)
    assert tuple(out.schema.names) == MANIFEST
    assert not any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in out.schema)
    rows = manifest_rows(out)
    assert [r["views"] > 0 for r in rows] == [True] * 5 + [False] and all(r["scored"] for r in rows[:5])
    assert "not an image" in rows[5]["error"]
    assert sorted(p.parent.name for p in parts.glob("*/part-*.parquet")) == ["shard-a", "shard-b"]
    with pytest.raises(Exception, match="not .*path.*shard"):  # what else comes back is refused, not imported
        manifest_rows(pa.table({"path": ["x"], "embeddings": [b"\0" * 8]}))

    # the driver: the parts become the shards (a rename), imported as a local run would have stored them
    with EmbeddingStore(tmp_path / "ray.db") as store, EmbeddingStore(tmp_path / "local.db") as local:
        for name in ("shard-a", "shard-b"):
            parquet.import_shard(store, parquet.finish_shard(shards, parts, name))
        embed_files(local, [t.clip for t in targets], paths)
        assert store.files(status=None) == local.files(status=None)
        identity, key = targets[0].encoder.identity, targets[0].clip.key
        a = store.read_embeddings(paths[:5], store.encoder_by_identity(identity), key)
        b = local.read_embeddings(paths[:5], local.encoder_by_identity(identity), key)
        assert a[0] == b[0] == paths[:5] and a[1] == b[1]
        np.testing.assert_allclose(a[2], b[2], rtol=1e-5, atol=1e-6)
        assert set(store.scores()) == set(paths[:5])
    assert sorted(p.name for p in shards.iterdir()) == [parts.name, "shard-a.parquet", "shard-b.parquet"]
    assert not list(parts.iterdir())
    assert sorted(shard_paths(shards)) == sorted(paths)  # each shard: a Parquet dataset (a folder of parts)

    # a shard of the same files again (failed files retried) replaces the old one; a killed run's parts go
    worker_output(tmp_path, tiny_clip_dir, score_head_path, paths[5:], [0], ["shard-b"], parts)
    parquet.finish_shard(shards, parts, "shard-b")
    assert shard_paths(shards, [shards / "shard-b.parquet"]) == paths[5:]
    (parts / "shard-c").mkdir()
    assert parquet.remove_partial(shards) == 1 and not parts.exists()

    # a node that does not see the shard folder (not shared storage) stops the run, naming it
    with pytest.raises(ClusterError, match=r"^Ray node .*shard folder .* not there.*same path.*--shard-dir"):
        worker_output(tmp_path, tiny_clip_dir, score_head_path, paths[:1], [0], ["shard-a"], parts)


def test_shard_dir_is_for_the_ray_engine_and_must_be_a_folder(tmp_path, data, tiny_clip_dir, capsys):  # noqa: F811
    db = tmp_path / "x.db"
    code, _, err = run(["embed", str(data), "--store", str(db), "--clip", str(tiny_clip_dir), "--shard-dir",
                        str(tmp_path / "s")], capsys)
    assert code == 2 and "--shard-dir is for --engine ray" in err and not db.exists()
    pytest.importorskip("ray.data")
    (tmp_path / "a-file").write_text("")
    code, _, err = run(["embed", str(data), "--store", str(db), "--clip", str(tiny_clip_dir), "--engine", "ray",
                        "--shard-dir", str(tmp_path / "a-file" / "shards"), "--no-progress"], capsys)
    assert code == 2 and "--shard-dir" in err and "cannot make or use it" in err and err.count("\n") == 1, err
    assert not db.exists()


def test_workers_write_into_shard_dir_and_a_killed_driver_resumes(ray_address, local_store, data, models,  # noqa: F811
                                                                  tmp_path, capsys, monkeypatch):
    from cityclf_core.engines import ray_data

    db, shards = tmp_path / "k.db", tmp_path / "elsewhere" / "shards"
    argv = ["embed", str(data), "--store", str(db), *models, "--engine", "ray", "--files-per-shard", "1",
            "--shard-dir", str(shards), "--no-progress"]
    running, said = kill_after_first_shard(argv, ray_address, shards, tmp_path)
    assert running, "the driver finished before it could be killed"
    assert "Traceback" not in said, said
    assert not db.with_name("k.db.shards").exists()  # the shards went where --shard-dir said
    written = shard_paths(shards)
    total = N_GOOD + 1 + len(BAD)
    assert 0 < len(written) < total
    with EmbeddingStore(db, create=False, readonly=True) as store:  # what a reader saw: the imported shards only
        imported = shard_paths(shards, [shards / f"{n}.parquet" for n in store.imported_shards()])
        assert {f.path for f in store.files(status=None)} == set(imported)

    received = []  # what the driver gets from Ray: manifests only

    def spy(batch):
        received.append((tuple(batch.schema.names), batch.nbytes, batch.num_rows))
        return manifest_rows(batch)

    manifest_rows = ray_data.manifest_rows
    monkeypatch.setattr(ray_data, "manifest_rows", spy)
    code, _, err = run(argv, capsys)  # the rerun (in this process, on the module's Ray)
    assert code == 1, err
    assert f"(Parquet shards in {shards})" in err
    assert received and all(names == ray_data.MANIFEST for names, _, _ in received)
    assert max(size / rows for _, size, rows in received) < 1000  # bytes per file: no embedding comes back
    done = shard_paths(shards)
    assert sorted(done) == sorted(set(done)) and len(done) == total  # every file in exactly one shard
    assert set(written) <= set(done)
    with EmbeddingStore(db) as store:
        assert store.stats()["files"] == N_GOOD + 1 and store.stats()["failed"] == len(BAD)
        assert len(store.imported_shards()) == total
    assert_same_embeddings(local_store[0], db, tmp_path, capsys)
    assert not list(shards.glob(".partial-*"))
    # the same shards imported elsewhere (another store, as on another machine): the same store, and once
    other = tmp_path / "other" / "copy.db"
    other.parent.mkdir()
    code, _, err = run(["import-shards", str(shards), "--store", str(other)], capsys)
    assert code == 0 and f"imported {total} shard(s) ({total} file(s))" in err and "0 already imported" in err, err
    assert_same_embeddings(local_store[0], other, tmp_path, capsys)
    code, _, err = run(["import-shards", str(shards), "--store", str(other)], capsys)
    assert code == 0 and f"imported 0 shard(s) (0 file(s))" in err and f"{total} already imported" in err, err
