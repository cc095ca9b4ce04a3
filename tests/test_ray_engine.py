"""--engine ray: Ray Data on a local Ray gives the store a local run gives; resumable; optional.

One local Ray (2 CPUs) for the whole module; tiny random CLIP and heads from
conftest; a few dozen small images. The test without Ray runs everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, illustration
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.store import EmbeddingStore

N_GOOD = 40
MANY = 3000  # files of the test where a node joins: blocks enough to leave a queue behind a stopped worker
BAD = {"corrupt.png": "not an image", "text.jpg": "not an image", "cut.png": "truncated or corrupt"}


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray for this module; its address, for driver subprocesses to join."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    # Ray's workers are started by its raylet, with the environment it had: this checkout must be importable
    # there too when it is not installed (CI installs it; a bare checkout run by pytest is not)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), before) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-data") / "data"
    (root / "sub").mkdir(parents=True)
    for i in range(N_GOOD):
        folder = root / "sub" if i % 3 == 0 else root
        Image.fromarray(illustration(40 + 7 * (i % 9), 36 + 5 * (i % 7), i)).save(folder / f"img{i:02d}.png")
    Image.fromarray(illustration(200, 90, 99)).save(root / "wide.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (root / "text.jpg").write_text("not a picture")
    whole = (root / "img01.png").read_bytes()
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])
    return root


@pytest.fixture(scope="module")
def models(tiny_clip_dir, score_head_path, class_head_path) -> list[str]:
    return ["-m", str(score_head_path), "-m", str(class_head_path), "--clip", str(tiny_clip_dir)]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(text: str) -> dict:
    """{(path, head): score or probs} of `--format jsonl` output."""
    rows = {}
    for line in text.splitlines():
        r = json.loads(line)
        rows[(r["path"], r["model"])] = r.get("score", r.get("probs"))
    return rows


def assert_same_scores(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key, va in a.items():
        vb = b[key]
        if isinstance(va, dict):
            assert va.keys() == vb.keys()
            assert list(va.values()) == pytest.approx(list(vb.values()), abs=1e-5), key
        else:
            assert va == pytest.approx(vb, abs=1e-5), key


def shard_paths(shards: Path, files: list[Path] | None = None) -> list[str]:
    """The paths in these shard files (default: every whole shard in the folder)."""
    import pyarrow.parquet as pq

    files = sorted(shards.glob("*.parquet")) if files is None else files
    return [p for f in files for p in pq.read_table(f, columns=["path"]).column(0).to_pylist()]


def assert_same_embeddings(db_a: Path, db_b: Path, tmp_path: Path, capsys) -> None:
    for name, db in (("a", db_a), ("b", db_b)):
        for policy in ("whole", "tiles:64:1536:up"):
            code, _, err = run(["export", "--store", str(db), "--out", str(tmp_path / f"{name}-{policy[:5]}.npz"),
                                "--policy", policy], capsys)
            assert code == 0, err
    for policy in ("whole", "tiles"):
        a, b = np.load(tmp_path / f"a-{policy}.npz"), np.load(tmp_path / f"b-{policy}.npz")
        assert list(a["paths"]) == list(b["paths"]) and len(a["paths"]) == N_GOOD + 1
        assert np.array_equal(a["offsets"], b["offsets"])
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=1e-5, atol=1e-6)
        assert str(a["clip_identity"]) == str(b["clip_identity"])


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, data, models):
    """The single-machine path: score PATH --store, its output and its skipped-file report."""
    tmp = tmp_path_factory.mktemp("local")
    report = tmp / "report.jsonl"
    code = main(["score", str(data), "--store", str(tmp / "local.db"), *models, "--format", "jsonl",
                 "--no-progress", "--report", str(report)])
    return tmp / "local.db", code, report


def test_ray_store_answers_like_a_local_one(ray_address, local_store, data, models, tmp_path, capsys):
    local_db, local_code, local_report = local_store
    capsys.readouterr()
    ray_db, report = tmp_path / "ray.db", tmp_path / "report.jsonl"
    code, out, err = run(["score", str(data), "--store", str(ray_db), *models, "--engine", "ray",
                          "--files-per-shard", "7", "--format", "jsonl", "--no-progress", "--report", str(report)],
                         capsys)
    # bad files: skipped and reported as a local run does, the rest scored
    assert code == local_code == 1, err
    assert report.read_text() == local_report.read_text()
    skipped: dict[str, str] = {}  # the first reason per file (scoring then adds "not in the store")
    for line in report.read_text().splitlines():
        skipped.setdefault(Path(json.loads(line)["path"]).name, json.loads(line)["error"])
    assert set(skipped) == set(BAD)
    for name, why in BAD.items():
        assert why in skipped[name]
    assert f"{N_GOOD + 1} embedded" in err and "3 skipped" in err
    ray_scores = jsonl(out)
    assert len({p for p, _ in ray_scores}) == N_GOOD + 1

    # the stores answer score --store, query and export alike
    answers = {}
    for name, db in (("local", local_db), ("ray", ray_db)):
        code, out, err = run(["score", "--store", str(db), *models, "--format", "jsonl", "--no-progress"], capsys)
        assert code == 0, err
        answers[name, "score"] = jsonl(out)
        code, out, err = run(["query", "--store", str(db), "--format", "jsonl", "--min", "TestAesthetics=0"], capsys)
        assert code == 0, err
        answers[name, "query"] = jsonl(out)
    assert_same_scores(answers["local", "score"], answers["ray", "score"])
    assert_same_scores(answers["local", "query"], answers["ray", "query"])
    assert_same_scores(answers["local", "score"], ray_scores)  # what the Ray run printed, from its actors
    assert_same_embeddings(local_db, ray_db, tmp_path, capsys)
    with EmbeddingStore(local_db) as a, EmbeddingStore(ray_db) as b:
        assert a.files(status=None) == b.files(status=None)  # paths, sizes, times, hashes, failures and why
        assert a.stats()["embeddings"] == b.stats()["embeddings"]

    # rerun: nothing redone, no shard rewritten or imported again
    shards = ray_db.with_name("ray.db.shards")
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.parquet")}
    with EmbeddingStore(ray_db) as store:
        imported = store.imported_shards()
    assert len(before) == -(-(N_GOOD + 1 + len(BAD)) // 7) and set(before) == {n + ".parquet" for n in imported}
    code, _, err = run(["embed", str(data), "--store", str(ray_db), *models, "--engine", "ray",
                        "--files-per-shard", "7", "--no-progress"], capsys)
    assert code == 1 and f"0 embedded, {N_GOOD + 1} already in the store, 3 skipped" in err
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.parquet")}
    assert all(after[n] == t for n, t in before.items())
    new = [shards / n for n in set(after) - set(before)]
    assert len(new) == 1 and {Path(p).name for p in shard_paths(new[0].parent, new)} == set(BAD)  # failed ones again
    with EmbeddingStore(ray_db) as store:
        assert imported < store.imported_shards()
        assert store.stats()["files"] == N_GOOD + 1


def test_selection_and_copy_without_a_store_match_a_local_run(ray_address, data, models, tmp_path, capsys):
    picks = {}
    for engine in ("local", "ray"):
        dest = tmp_path / engine
        # on Ray, --workers equal to the CPUs (2): decoding keeps one, the run finishes
        workers = ["--workers", "2"] if engine == "ray" else []
        code, out, err = run(["score", str(data), *models, "--engine", engine, "--top", "5", "--min",
                              "TestCompression:Pass=0.2", "--copy", str(dest), "--format", "jsonl", "--no-progress",
                              *workers], capsys)
        assert code == 1, err  # the bad files
        assert engine == "local" or "one kept for decoding" in err
        picks[engine] = jsonl(out)
        assert sorted(p.relative_to(dest) for p in dest.rglob("*.png")) == sorted(
            {Path(p).relative_to(data) for p, _ in picks[engine]})
    assert_same_scores(picks["local"], picks["ray"])
    assert len({p for p, _ in picks["ray"]}) == 5


def kill_after_first_shard(argv: list[str], ray_address: str, shards: Path, tmp_path: Path) -> tuple[bool, str]:
    """Run `cityclf argv` as a driver joining the module's Ray, SIGKILL it once its first shard is in `shards`:
    (whether it was still running then, what it said on stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-m", "cityclf_core", *argv, "--address", ray_address], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240  # a bound on a hang only; the kill waits for the first shard
        while not any(shards.glob("*.parquet")):
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.02)
        running = driver.poll() is None
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
        said = driver.stderr.read().decode()
        driver.stderr.close()
    return running, said


def test_killed_driver_loses_and_repeats_nothing(ray_address, local_store, data, models, tmp_path, capsys):
    db, shards = tmp_path / "k.db", tmp_path / "k.db.shards"
    argv = ["embed", str(data), "--store", str(db), *models, "--engine", "ray", "--files-per-shard", "1",
            "--no-progress"]
    running, said = kill_after_first_shard(argv, ray_address, shards, tmp_path)
    assert running, "the driver finished before it could be killed"
    assert " ERROR " not in said and "Traceback" not in said, said  # a normal run (workers started) logs no errors
    written = shard_paths(shards)
    total = N_GOOD + 1 + len(BAD)
    assert 0 < len(written) < total  # killed mid-run: some shards written, not all

    code, _, err = run(argv, capsys)  # the rerun (in this process, on the module's Ray)
    assert code == 1, err
    done = shard_paths(shards)
    assert sorted(done) == sorted(set(done)) and len(done) == total  # every file in exactly one shard: none redone
    assert set(written) <= set(done)
    with EmbeddingStore(db) as store:
        assert store.stats()["files"] == N_GOOD + 1 and store.stats()["failed"] == len(BAD)
        assert len(store.imported_shards()) == total
    assert_same_embeddings(local_store[0], db, tmp_path, capsys)

    # killed between writing shards and importing them: the next run imports them, computes none of them again
    db2, shards2 = tmp_path / "k2.db", tmp_path / "k2.db.shards"
    shutil.copytree(shards, shards2)
    (shards2 / ".partial-shard-0123.999.tmp").write_bytes(b"PAR1")  # and a half-written one
    argv2 = [str(db2) if a == str(db) else a for a in argv]
    before = {p.name: p.stat().st_mtime_ns for p in shards2.glob("*.parquet")}
    code, _, err = run(argv2, capsys)
    assert code == 1 and f"imported {total} shard(s) an interrupted run had written" in err
    assert f"0 embedded, {N_GOOD + 1} already in the store, 3 skipped" in err
    assert not list(shards2.glob("*.tmp"))
    after = {p.name: p.stat().st_mtime_ns for p in shards2.glob("*.parquet")}
    rewritten = [shards2 / n for n in after if after[n] != before.get(n)]
    assert sorted(Path(p).name for p in shard_paths(shards2, rewritten)) == sorted(BAD)  # failed files: tried again
    assert_same_embeddings(local_store[0], db2, tmp_path, capsys)


def test_engine_ray_without_ray_says_how_to_get_it(tmp_path, data, tiny_clip_dir):
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'ray' (hidden for this test)\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), str(ROOT)])}
    for command in ("embed", "score"):
        out = subprocess.run([sys.executable, "-m", "cityclf_core", command, str(data), "--store",
                              str(tmp_path / "x.db"), "--clip", str(tiny_clip_dir), *(["-m", "x"] * (command == "score")),
                              "--engine", "ray"], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert 'pip install -e ".[ray]"' in out.stderr and "not published on PyPI" in out.stderr, out.stderr
        assert 'pip install "cityclf[ray]"' not in out.stderr  # not on the index: an install line that fails
        assert not (tmp_path / "x.db").exists()


SHARD_ENCODERS = [{"identity": "clip-a", "name": "a", "source": "/clips/a", "image_size": 32, "embed_dim": 4}]


def shard_rows(emb: np.ndarray) -> list[dict]:
    """A shard's rows as a worker writes them: a file with its embeddings and a score, and a failed file."""
    from cityclf_core.engines import parquet

    return [
        {"path": "/d/x.png", "size": 10, "mtime_ns": 5, "content": "c1", "width": 3, "height": 2, "status": "ok",
         "error": None, "notes": ["animated: first of 2 frames scored"],
         "embeddings": [parquet.embedding_cell("clip-a", "tiles:64:1536:up", emb)],
         "scores": [{"head": "H", "combine": "mean", "score": 0.25, "label": "25%", "probs": None}]},
        {"path": "/d/bad.png", "size": 3, "mtime_ns": 6, "content": None, "width": None, "height": None,
         "status": "failed", "error": "not an image, or a format Pillow cannot read", "notes": [], "embeddings": [],
         "scores": []},
    ]


def test_shard_import_is_whole_idempotent_and_recorded(tmp_path):
    pytest.importorskip("pyarrow")
    from cityclf_core.engines import parquet

    emb = np.arange(8, dtype=np.float32).reshape(2, 4)
    shard = parquet.write_shard(tmp_path / "shards", "shard-1", shard_rows(emb), SHARD_ENCODERS)
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["shard-1.parquet"]  # no temporary left
    with EmbeddingStore(tmp_path / "s.db") as store:
        assert parquet.pending_shards(store, tmp_path / "shards") == [shard]
        for _ in range(2):  # importing twice changes nothing
            parquet.import_shard(store, shard)
            row = store.encoder_by_identity("clip-a")
            found, counts, stacked, _ = store.read_embeddings(["/d/x.png"], row, "tiles:64:1536:up")
            assert found == ["/d/x.png"] and counts == [2] and np.array_equal(stacked, emb)
            assert store.stats()["files"] == 1 and store.stats()["failed"] == 1 and store.stats()["embeddings"] == 1
            assert store.scores() == {"/d/x.png": {"H": (0.25, "25%", None, "score")}}  # an entry with no kind
            assert store.file("/d/bad.png").error == "not an image, or a format Pillow cannot read"
            assert store.imported_shards() == {"shard-1"}
        assert parquet.pending_shards(store, tmp_path / "shards") == []
    (tmp_path / "shards" / "shard-2.parquet").write_bytes(b"PAR1 not really")
    with EmbeddingStore(tmp_path / "s.db") as store:
        with pytest.raises(Exception, match="shard-2.parquet is not a cityclf shard"):
            parquet.import_shard(store, tmp_path / "shards" / "shard-2.parquet")
        assert store.imported_shards() == {"shard-1"}


def test_import_shards_imports_whole_shards_once_and_leaves_parts_alone(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from cityclf_core.engines import parquet

    shards, db = tmp_path / "shards", tmp_path / "elsewhere" / "s.db"
    db.parent.mkdir()
    parquet.write_shard(shards, "shard-1", shard_rows(np.ones((2, 4), np.float32)), SHARD_ENCODERS)
    running = parquet.parts_folder(shards, "run")  # the parts of a run still going on
    running.mkdir()
    (running / "part-0.parquet").write_bytes(b"half written")
    code, _, err = run(["import-shards", str(shards), "--store", str(db)], capsys)
    assert code == 0 and "imported 1 shard(s) (2 file(s))" in err and "0 already imported" in err, err
    with EmbeddingStore(db) as store:
        assert (store.stats()["files"], store.stats()["failed"], store.imported_shards()) == (1, 1, {"shard-1"})
    code, _, err = run(["import-shards", str(shards), "--store", str(db)], capsys)
    assert code == 0 and "imported 0 shard(s) (0 file(s))" in err and "1 already imported" in err, err
    assert (running / "part-0.parquet").read_bytes() == b"half written"
    code, _, err = run(["import-shards", str(tmp_path / "nowhere"), "--store", str(tmp_path / "new.db")], capsys)
    assert code == 2 and "nowhere: not a folder" in err and "--shard-dir" in err, err
    assert not (tmp_path / "new.db").exists()  # refused before any store is made


def test_import_shards_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "shards").mkdir()
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow: ImportError, as where it is not installed
    code, _, err = run(["import-shards", str(tmp_path / "shards"), "--store", str(tmp_path / "s.db")], capsys)
    assert code == 2 and "needs pyarrow" in err and 'pip install -e ".[ray]"' in err, err
    assert not (tmp_path / "s.db").exists()


def test_a_rerun_with_nothing_to_embed_loads_no_clip_and_starts_no_workers(tmp_path, tiny_clip_dir, score_head_path,
                                                                           monkeypatch):
    pytest.importorskip("ray.data")
    from cityclf_core import loading
    from cityclf_core.dataset import embed_files
    from cityclf_core.dataset.passes import ModelSpec
    from cityclf_core.engines import ray_data

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(illustration(40 + i, 30, i)).save(paths[-1])
    spec = ModelSpec((str(score_head_path),), str(tiny_clip_dir), dtype="fp32")
    with EmbeddingStore(tmp_path / "s.db") as store:
        embed_files(store, [g.clip for g in spec.load("cpu")[1]], paths)
        monkeypatch.setattr(loading, "load_encoder", lambda *a, **k: pytest.fail("a CLIP was loaded"))
        monkeypatch.setattr(ray_data, "_stream", lambda *a, **k: pytest.fail("Ray workers were started"))
        seen = []
        report = ray_data.run_job(store, spec, paths, tmp_path / "shards", on_file=lambda p, e: seen.append((p, e)))
    assert (report.embedded, report.reused, report.shards) == (0, 3, 0) and seen == [(p, None) for p in paths]
    assert report.model.names == [b.name for b in report.model.bindings] and len(report.model.names) == 1


# ---------------------------------------------------------------- the cluster: sizing, joining, failures


class FakeRay:
    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_clip_workers_are_an_elastic_pool_that_leaves_decoding_a_cpu(monkeypatch):
    from cityclf_core.engines import ray_cluster
    from cityclf_core.engines.ray_cluster import Pool, actor_pool

    monkeypatch.setattr(ray_cluster, "node_types", lambda: {})
    cpu2, cpu8 = FakeRay(CPU=2.0), FakeRay(CPU=8.0)
    # CPU-only, no MAX: grows as nodes join (Ray Data's reservation keeps decoding a CPU); MIN cut to what fits now
    assert actor_pool(cpu8, None, None) == Pool(1, None, 0.0, 1.0)
    assert actor_pool(cpu2, None, None) == Pool(1, None, 0.0, 1.0)
    many = actor_pool(cpu2, (3, None), None)
    assert (many.min_size, many.max_size) == (1, None) and "more as nodes join" in many.note
    clamped = actor_pool(cpu2, 2, None)  # --workers equal to the CPUs: decoding keeps one
    assert (clamped.min_size, clamped.max_size) == (1, 1) and "one kept for decoding" in clamped.note
    assert actor_pool(cpu8, (2, 4), None) == Pool(2, 4, 0.0, 1.0)
    assert actor_pool(FakeRay(CPU=1.0), None, None).cpus == 0.0  # one CPU in all: shared, not starved
    # GPUs: asked of Ray, not refused for what is present now; GPU node types (min_workers: 0) count
    assert actor_pool(FakeRay(CPU=8.0, GPU=1.0), None, None) == Pool(1, None, 1.0, 1.0)
    told = actor_pool(FakeRay(CPU=8.0, GPU=1.0), (1, 3), 2.0)  # more than any node has now: asked all the same
    assert (told.min_size, told.max_size, told.gpus) == (1, 3, 2.0) and "wait for an autoscaler" in told.note
    monkeypatch.setattr(ray_cluster, "node_types", lambda: {"CPU": 32.0, "GPU": 4.0})
    assert actor_pool(FakeRay(CPU=4.0), None, None) == Pool(1, None, 1.0, 1.0)  # no GPU node up yet
    assert actor_pool(FakeRay(CPU=8.0, GPU=1.0), (1, 3), 2.0) == Pool(1, 3, 2.0, 1.0)  # more than there are now
    monkeypatch.setattr(ray_cluster, "node_types", lambda: {})
    assert "wait for an autoscaler" in actor_pool(cpu8, None, 1.0).note  # told GPUs, none anywhere yet: a note
    with pytest.raises(ray_cluster.ConfigError, match="MIN at most MAX"):
        actor_pool(cpu8, (3, 2), None)


def test_workers_min_max_is_for_the_ray_engine(tmp_path, data, tiny_clip_dir, capsys):
    from cityclf_core.cli.engine import workers_arg

    assert workers_arg("3") == 3 and workers_arg("1:4") == (1, 4) and workers_arg("2:") == (2, None)
    code, _, err = run(["embed", str(data), "--store", str(tmp_path / "x.db"), "--clip", str(tiny_clip_dir),
                        "--workers", "1:4"], capsys)
    assert code == 2 and "--workers MIN:MAX is for --engine ray" in err and not (tmp_path / "x.db").exists()
    with pytest.raises(SystemExit) as stop:
        main(["embed", str(data), "--store", str(tmp_path / "x.db"), "--clip", str(tiny_clip_dir), "--engine", "ray",
              "--workers", "0:4"])
    assert stop.value.code == 2 and "argument --workers: '0': must be at least 1" in capsys.readouterr().err


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_address_fails_before_any_model_or_store(tmp_path, data, models, monkeypatch, capsys):
    pytest.importorskip("ray.data")
    from cityclf_core import loading

    monkeypatch.setattr(loading, "load_encoder", lambda *a, **k: pytest.fail("a CLIP was loaded"))
    db = tmp_path / "never.db"
    for address, says in ((f"127.0.0.1:{closed_port()}", "cannot reach a Ray cluster there"),
                          ("no-port-here", "expected HOST:PORT")):
        code, _, err = run(["embed", str(data), "--store", str(db), *models, "--engine", "ray", "--address", address,
                            "--no-progress"], capsys)
        assert code == 2 and says in err and err.count("\n") == 1, err
        assert not db.exists() and not list(tmp_path.iterdir())  # no empty store, no shard folder


def driver(argv: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-m", "cityclf_core", *argv], env=env, capture_output=True, text=True,
                          cwd=tmp_path)


def test_a_cluster_wanting_a_token_says_authentication(ray_address, tmp_path, data, models):
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    out = driver(["embed", str(data), "--store", str(tmp_path / "a.db"), *models, "--engine", "ray",
                  "--address", ray_address, "--no-progress"], tmp_path, HOME=str(home), RAY_AUTH_MODE="token",
                 RAY_AUTH_TOKEN="", RAY_AUTH_TOKEN_PATH="")
    assert out.returncode == 2, out.stderr
    assert "refused this client's authentication" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "a.db").exists()


def test_a_worker_that_cannot_start_is_one_clear_line(ray_address, tmp_path, data, models):
    # a GPU asked for where torch has no CUDA (this machine): the actor's failure, on the driver, in one line
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = driver(["embed", str(data), "--store", str(tmp_path / "g.db"), *models, "--engine", "ray",
                  "--address", ray_address, "--device", "cuda", "--no-progress"], tmp_path)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("cityclf:")]
    assert len(errors) == 1 and "sees no CUDA" in errors[0] and "Ray node" in errors[0], out.stderr
    assert "Traceback" not in out.stderr and "this is a bug" not in out.stderr and " ERROR " not in out.stderr
    assert len(out.stderr.splitlines()) <= 5, out.stderr


def test_worker_failures_become_one_line_naming_the_node():
    from cityclf_core.engines.ray_cluster import ClusterError, cluster_error, worker_errors

    @worker_errors
    def oom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")

    with pytest.raises(ClusterError, match=r"^Ray node .*ran out of memory \(CUDA out of memory.*--batch-size"):
        oom()
    # as Ray carries an actor's death: only the text of the worker's error
    died = RuntimeError("The actor died because of an error raised in its creation task\n  File x\n"
                        "cityclf_core.engines.ray_cluster.ClusterError: Ray node n1 (10.0.0.2): the CLIP on this "
                        "Ray node is not the driver's; install the same CLIP and heads on every node\n")
    clear = cluster_error(RuntimeError("wrapper")) or cluster_error(died)
    assert isinstance(clear, ClusterError) and str(clear).startswith("Ray node n1 (10.0.0.2): the CLIP")
    assert cluster_error(ValueError("something else")) is None
    assert "install cityclf" in str(cluster_error(RuntimeError("System error: No module named 'cityclf_core'")))


def test_a_file_missing_on_a_node_stops_the_run_naming_node_and_path(tmp_path):
    pa = pytest.importorskip("pyarrow")
    from cityclf_core.engines.ray_cluster import ClusterError
    from cityclf_core.engines.ray_data import known_array, prepare_batch
    from cityclf_core.scoring.crops import CropPolicy

    gone = str(tmp_path / "on-the-driver-only.png")
    batch = pa.table({"path": [gone], "shard": pa.array([0], pa.int32()), "seen": [True]})
    with pytest.raises(ClusterError, match=r"Ray node .*on-the-driver-only\.png is not there.*same path on every"):
        prepare_batch(batch, [(CropPolicy(), 32)], [known_array(set())], 10**8)
    # a file the driver could not stat either, or one gone on the driver's own machine: a failed row, as locally
    for seen, host in ((False, None), (True, socket.gethostname())):
        batch = pa.table({"path": [gone], "shard": pa.array([0], pa.int32()), "seen": [seen]})
        out = prepare_batch(batch, [(CropPolicy(), 32)], [known_array(set())], 10**8, driver_host=host)
        assert "No such file" in out.column("error").to_pylist()[0]


def test_known_contents_are_one_sorted_array():
    from cityclf_core.engines.ray_data import file_blocks, has_content, known_array

    contents = {f"{i:064x}" for i in range(0, 1000, 3)}
    arr = known_array(contents)
    assert all(has_content(arr, c) for c in contents)
    assert not any(has_content(arr, f"{i:064x}") for i in range(1, 1000, 3))
    assert not has_content(known_array(set()), "ab") and not has_content(arr, "f" * 65)
    shards = {"a": [f"/x/{i}" for i in range(10)], "b": [f"/y/{i}" for i in range(3)]}
    blocks = file_blocks(shards, [True] * 13)
    assert sum(b.num_rows for b in blocks) == 13 and all(b.num_rows <= 4 for b in blocks)
    assert [s for b in blocks for s in b.column("shard").to_pylist()] == [0] * 10 + [1] * 3
    # a block is a decoding task: few enough to cost Ray little, enough for every CPU to have four
    for n, cpus, want in ((30, 2, 8), (2_000, 2, 16), (2_000, 64, 250), (20_000, 2, 157), (1_000_000, 2, 1000)):
        sizes = [b.num_rows for b in file_blocks({"s": [f"/x/{i}" for i in range(n)]}, [True] * n, cpus)]
        assert sum(sizes) == n and len(sizes) == want, (n, cpus, len(sizes))


def test_a_file_a_node_cannot_see_stops_the_run_and_stores_no_failure(ray_address, tmp_path, tiny_clip_dir,
                                                                      monkeypatch):
    # the driver "sees" ghost.png and runs on another host; the Ray workers (this machine) do not find it
    from types import SimpleNamespace

    from cityclf_core.dataset.passes import ModelSpec
    from cityclf_core.engines import ray_data
    from cityclf_core.engines.ray_cluster import ClusterError

    real, ghost = str(tmp_path / "real.png"), str(tmp_path / "ghost.png")
    Image.fromarray(illustration(40, 30, 1)).save(real)
    planned = ray_data.files_to_embed

    def driver_view(store, known, paths):
        for path, size, mtime, needed in planned(store, known, paths):
            yield (path, 123, 456, True) if path == ghost else (path, size, mtime, needed)

    monkeypatch.setattr(ray_data, "files_to_embed", driver_view)
    monkeypatch.setattr(ray_data, "socket", SimpleNamespace(gethostname=lambda: "the-driver-elsewhere"))
    with EmbeddingStore(tmp_path / "g.db") as store:
        with pytest.raises(ClusterError, match=r"^Ray node .*ghost\.png is not there.*same path on every node"):
            ray_data.run_job(store, ModelSpec(clip=str(tiny_clip_dir), dtype="fp32"), [real, ghost],
                             tmp_path / "g.db.shards", ray_data.RayOptions(files_per_shard=1, device="cpu"))
        assert store.file(ghost) is None and store.stats()["failed"] == 0  # no failed row for it


# ---------------------------------------------------------------- a two-node cluster (two raylets on this machine)


@pytest.fixture(scope="module")
def two_nodes():
    """A CPU-only Ray cluster of two nodes with 1 CPU each (Ray's own test cluster), its files and its address
    file in a temporary folder of its own (not /tmp/ray, where other Rays on this machine look)."""
    pytest.importorskip("ray.data")
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    import tempfile

    tmp = tempfile.mkdtemp(prefix="cityclf-ray-", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))  # the workers'
        cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        try:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            cluster.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def clip_workers(cluster) -> dict[int, str]:
    """The CLIP workers (Ray Data's actors for ClipWorker) of `cluster` running now, as {pid: node id}: a worker
    process is a child of its node's raylet, and Ray titles an actor's process after its class."""
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in cluster.list_all_nodes()}
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            title = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid in raylets and b"ClipWorker" in title:
            found[int(proc.name)] = raylets[ppid].node_id
    return found


def cluster_driver(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "cityclf_core", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)


@contextlib.contextmanager
def watched_driver(argv: list[str], tmp_path: Path):
    """(driver, its stderr lines so far): a cluster_driver whose stderr is read into the list while it runs;
    killed and reaped when the block ends."""
    import threading

    driver = cluster_driver(argv, tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(driver.stderr), daemon=True)
    reader.start()
    try:
        yield driver, lines
    finally:
        driver.kill()
        driver.wait()
        reader.join(timeout=10)


def test_two_nodes_workers_equal_to_the_cpus_finishes(two_nodes, data, models, tmp_path):
    # 2 CPUs on 2 nodes, --workers 2: one CLIP worker, decoding keeps the other CPU, and the run ends
    db = tmp_path / "w.db"
    driver = cluster_driver(["embed", str(data), "--store", str(db), *models, "--engine", "ray", "--address",
                             two_nodes.address, "--workers", "2", "--files-per-shard", "7", "--no-progress"], tmp_path)
    try:
        _, said = driver.communicate(timeout=300)  # a guard against the old hang, not a measure
    finally:
        driver.kill()
    assert driver.returncode == 1, said  # the bad files
    assert "one kept for decoding" in said and f"{N_GOOD + 1} embedded" in said and " ERROR " not in said, said
    with EmbeddingStore(db) as store:
        assert store.stats()["files"] == N_GOOD + 1


def test_a_cpu_node_that_joins_mid_run_gets_a_clip_worker(two_nodes, models, tmp_path):
    # a CPU-only cluster (1 CPU on each of 2 nodes: one CLIP worker, decoding on the other CPU); the CLIP stage falls
    # behind (its worker is stopped with SIGSTOP, as a slow CLIP would), a node with 2 CPUs joins: the pool grows
    # onto it, and once the first worker goes on the run finishes with everything stored once
    many = tmp_path / "many"  # enough files that the CLIP stage still has a queue when the node joins
    many.mkdir()
    for i in range(MANY):
        Image.fromarray(illustration(32 + i % 11, 32 + i % 7, 1000 + i)).save(many / f"m{i:04d}.png")
    db, shards = tmp_path / "c.db", tmp_path / "c.db.shards"
    earlier = set(clip_workers(two_nodes))  # an earlier test's workers may still be ending
    stopped, joined, grown = None, None, set()
    with watched_driver(["embed", str(many), "--store", str(db), *models, "--engine", "ray", "--address",
                         two_nodes.address, "--files-per-shard", "4", "--no-progress"], tmp_path) as (driver, lines):
        try:
            deadline = time.monotonic() + 300  # a guard against a hang, not a measure
            while stopped is None:
                assert driver.poll() is None, "".join(lines)
                assert time.monotonic() < deadline, "no CLIP worker started"
                new = [pid for pid in clip_workers(two_nodes) if pid not in earlier]
                if new and any(shards.rglob("*.parquet")):  # a part written: the worker runs (stopped while
                    stopped = new[0]                        # starting, Ray Data would wait on it)
                    os.kill(stopped, signal.SIGSTOP)
                time.sleep(0.02)
            joined = two_nodes.add_node(num_cpus=2)
            while not grown:
                assert driver.poll() is None, "".join(lines)
                assert time.monotonic() < deadline, "the pool did not grow onto the node that joined"
                grown = {pid for pid, node in clip_workers(two_nodes).items() if node == joined.node_id}
                time.sleep(0.05)
            os.kill(stopped, signal.SIGCONT)
            driver.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if stopped is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, signal.SIGCONT)
            if joined is not None:
                two_nodes.remove_node(joined)
    said = "".join(lines)
    assert driver.returncode == 0, said
    assert f"{MANY} embedded" in said and " ERROR " not in said and "Traceback" not in said, said
    with EmbeddingStore(db) as store:
        assert store.stats()["files"] == MANY


def test_a_gpu_node_that_joins_mid_run_gets_the_clip_workers(two_nodes, data, models, tmp_path):
    # the README's autoscaling shape: the job asks for GPU workers on a cluster with none; the CLIP stage waits,
    # decoding runs; a node with a GPU joins (Ray counts a declared GPU; the worker runs on its CPU) and the
    # workers start there, on it alone, and the run finishes
    db, shards = tmp_path / "g.db", tmp_path / "g.db.shards"
    seen: set = set()
    # the cluster is the module's: the workers of an earlier test's job may still be ending (Ray stops them after
    # their driver leaves); only processes that were not there at the start are this run's
    earlier = set(clip_workers(two_nodes))
    with watched_driver(["embed", str(data), "--store", str(db), *models, "--engine", "ray", "--address",
                         two_nodes.address, "--num-gpus-per-worker", "1", "--device", "cpu", "--workers", "1:2",
                         "--files-per-shard", "7", "--no-progress"], tmp_path) as (driver, lines):
        deadline = time.monotonic() + 300  # a guard against a hang, not a measure
        while not any("wait for an autoscaler" in line for line in lines):  # the run has started, without workers
            assert driver.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "no note about waiting for GPU nodes"
            time.sleep(0.02)
        assert not list(shards.glob("*.parquet"))  # nothing can be embedded without a CLIP worker
        with pytest.MonkeyPatch.context() as mp:  # conftest hides GPUs; Ray wants a visible id per declared GPU
            mp.setenv("CUDA_VISIBLE_DEVICES", "0")
            gpu_node = two_nodes.add_node(num_cpus=1, num_gpus=1)
        while driver.poll() is None:
            seen |= {node for pid, node in clip_workers(two_nodes).items() if pid not in earlier}
            assert time.monotonic() < deadline, "the run did not finish once a GPU node joined"
            time.sleep(0.05)
    said = "".join(lines)
    assert driver.returncode == 1, said  # the bad files
    assert f"{N_GOOD + 1} embedded" in said and " ERROR " not in said and "Traceback" not in said, said
    assert seen == {gpu_node.node_id}  # the CLIP workers ran on the node that joined, and only there
    with EmbeddingStore(db) as store:
        assert store.stats()["files"] == N_GOOD + 1
