"""A full disk, a read-only file system, names too long and folders that cannot be written: each writer stops
with a clear error (exit 2) naming the file and what to do, and leaves what was there as it was; a store is
called damaged only when SQLite's integrity_check says so.

The full disk is a small tmpfs mounted for the test (as root); where mounting is not allowed, those tests are
skipped, saying why.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess

import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main


def mounted(folder, size):
    """`folder`, a tmpfs of `size` mounted there (as root); the test is skipped, saying why, where it cannot be."""
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill ({r.stderr.strip() or 'mount failed'}); needs root")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    yield mounted(tmp_path / "disk", "1m")
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=False)


def fill(disk, leave=0):
    """Fill the disk: a file grows until the system says ENOSPC, then gives back `leave` bytes. Returns a
    function that frees it again."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 20, 4096):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    return lambda: os.unlink(disk / "filler")


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, err


def images(folder, n=3, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(illustration(48, 40, seed + i)).save(folder / f"img{seed + i}.png")
    return folder


def no_temporaries(folder):
    return not [p for p in os.listdir(folder) if "cityclf" in p or p.endswith((".merging", ".tmp"))]


def test_write_tags_on_a_full_disk_is_a_clear_error_and_keeps_the_captions(small_disk, tiny_clip_dir,
                                                                           score_head_path, capsys):
    data = images(small_disk / "data")
    for p in data.glob("*.png"):
        p.with_suffix(".txt").write_text("solo, keep me\n")
    free = fill(small_disk)
    argv = ["score", data, "--write-tags", "--clip", tiny_clip_dir, "-m", score_head_path, "--no-progress"]
    code, err = run(argv, capsys)
    assert code == 2, err
    assert "disk is full" in err and "img0.txt" in err and "free some space" in err and "bug" not in err
    assert all(p.read_text() == "solo, keep me\n" for p in data.glob("*.txt"))
    assert no_temporaries(data)
    free()
    code, err = run(argv, capsys)
    assert code == 0, err
    assert all(p.read_text().startswith("solo, keep me, testaesthetics_") for p in data.glob("*.txt"))


def test_copy_to_a_full_disk_stops_with_a_clear_error_and_no_partial_file(tmp_path, small_disk, tiny_clip_dir,
                                                                            score_head_path, capsys):
    data = images(tmp_path / "data")
    dest = small_disk / "dest"
    dest.mkdir()
    free = fill(small_disk)
    argv = ["score", data, "--copy", dest, "--clip", tiny_clip_dir, "-m", score_head_path, "--no-progress"]
    code, err = run(argv, capsys)
    assert code == 2 and "disk is full" in err and "img0.png" in err and "bug" not in err, err
    assert os.listdir(dest) == []  # no partial copy, no temporary
    free()
    code, err = run(argv, capsys)
    assert code == 0, err
    assert sorted(os.listdir(dest)) == ["img0.png", "img1.png", "img2.png"]


@pytest.fixture
def stores(tmp_path, small_disk, tiny_clip_dir, score_head_path, capsys):
    """A store on the small disk and a part (on the big one) with other images to merge into it."""
    target, part = small_disk / "s.db", tmp_path / "part.db"
    for db, seed in ((target, 0), (part, 10)):
        code, err = run(["score", images(tmp_path / f"in{seed}", seed=seed), "--store", db, "--clip", tiny_clip_dir,
                         "-m", score_head_path, "--no-progress"], capsys)
        assert code == 0, err
    return target, part


def rows(db):
    con = sqlite3.connect(db)
    try:
        return (con.execute("SELECT COUNT(*) FROM files").fetchone()[0],
                con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def test_merge_on_a_full_disk_is_a_clear_error_and_never_calls_the_store_damaged(stores, small_disk, capsys):
    target, part = stores
    before = target.read_bytes()
    free = fill(small_disk)
    code, err = run(["merge", "--store", target, part], capsys)
    assert code == 2, err
    assert "disk is full" in err and str(target) in err and "damaged" not in err.replace("not damaged", ""), err
    assert target.read_bytes() == before
    assert no_temporaries(small_disk)
    free()  # (a store in WAL mode cannot even be opened on a full disk: SQLite needs its -shm file)
    assert rows(target) == (3, "ok")
    code, err = run(["merge", "--store", target, part], capsys)
    assert code == 0, err
    assert rows(target) == (6, "ok")


def test_export_and_grid_on_a_full_disk_keep_the_old_file(stores, small_disk, capsys):
    target, part = stores
    old = {small_disk / "emb.npz": b"old export", small_disk / "sheet.png": b"old sheet"}
    for p, data in old.items():
        p.write_bytes(data)
    free = fill(small_disk)
    for argv in (["export", "--store", part, "--out", small_disk / "emb.npz"],
                 ["grid", "--store", part, "--out", small_disk / "sheet.png"]):
        code, err = run(argv, capsys)
        assert code == 2 and "disk is full" in err and "bug" not in err, err
    assert all(p.read_bytes() == data for p, data in old.items())
    assert no_temporaries(small_disk)
    free()


def test_pixiv_ingest_on_a_full_disk_is_a_clear_error(small_disk, capsys):
    from cityclf_core.pixiv.synth import synthesize

    synthesize(small_disk / "ds", works=6, artists=2, size=8)
    free = fill(small_disk)
    code, err = run(["pixiv", "ingest", small_disk / "ds"], capsys)
    assert code == 2 and "metadata.sqlite3" in err and "disk is full" in err and "bug" not in err, err
    free()
    code, err = run(["pixiv", "ingest", small_disk / "ds"], capsys)
    assert code == 0, err


def test_a_read_only_file_system_is_a_clear_error(small_disk, tiny_clip_dir, score_head_path, capsys):
    data = images(small_disk / "data", n=1)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        code, err = run(["score", data, "--write-tags", "--clip", tiny_clip_dir, "-m", score_head_path,
                         "--no-progress"], capsys)
        assert code == 2 and "read-only" in err and "img0.txt" in err and "bug" not in err, err
        code, err = run(["score", data, "--copy", small_disk / "copies", "--clip", tiny_clip_dir,
                         "-m", score_head_path, "--no-progress"], capsys)
        assert code == 2 and "read-only" in err and "copies" in err and "bug" not in err, err
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)


def test_output_files_are_checked_before_any_work(tmp_path, tiny_clip_dir, score_head_path, capsys, monkeypatch):
    """--report, export --out, grid --out: refused (exit 2) or their folder made, before anything is scored."""
    from cityclf_core.scoring.pipeline import ScoringModel

    data = images(tmp_path / "data", n=1)

    def never(*a, **kw):
        raise AssertionError("scoring started before the output was checked")

    monkeypatch.setattr(ScoringModel, "score", never)
    base = ["--clip", tiny_clip_dir, "-m", score_head_path, "--no-progress"]
    for report, why in (("/proc/x.jsonl", "no file can be written there"),
                        (tmp_path / ("r" * 300 + ".jsonl"), "longer than 255 bytes"),
                        (tmp_path, "is a folder"),
                        (tmp_path / "a-file" / "x.jsonl", "not a folder")):
        (tmp_path / "a-file").write_text("x")
        with pytest.raises(SystemExit) as e:
            main(["score", str(data), "--report", str(report), *[str(a) for a in base]])
        err = capsys.readouterr().err
        assert e.value.code == 2 and why in err and "--report" in err, err
    out = tmp_path / "nosuchdir" / "deeper" / "emb.npz"
    code, err = run(["export", "--store", tmp_path / "missing.db", "--out", out], capsys)
    assert code == 2 and "missing.db" in err  # the store's error, not the output's: its folder was made
    assert out.parent.is_dir()


@pytest.mark.parametrize("command", [["train", "--data", "DATA"], ["pixiv", "train"], ["pixiv", "eval"]])
def test_output_folders_are_made_or_refused_before_any_work(tmp_path, capsys, monkeypatch, command):
    """train's and pixiv train/eval's --out: made when missing, refused (exit 2, naming --out) when no file can be
    written in it, before the config is even read."""
    import cityclf_core.pixiv.config
    import cityclf_core.train

    from cityclf_core.errors import ConfigError

    def work(*a, **kw):
        raise ConfigError("the work started")

    monkeypatch.setattr(cityclf_core.train, "load_config", work)
    monkeypatch.setattr(cityclf_core.pixiv.config, "load_settings", work)
    (tmp_path / "a-file").write_text("x")
    argv = [str(tmp_path / "data") if a == "DATA" else a for a in command] + ["--config", str(tmp_path / "c.yaml")]
    for out, why in (("/proc/x", "no file can be written there"),
                     (tmp_path / "a-file", "is a file, not a folder"),
                     (tmp_path / "a-file" / "deeper", "not a folder"),
                     (tmp_path / ("o" * 300), "too long"),
                     ("bad\0name", "NUL byte")):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--out", str(out)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and why in err and "--out" in err and "work started" not in err, err
    out = tmp_path / "new" / "deeper"
    code, err = run([*argv, "--out", out], capsys)
    assert code == 2 and "the work started" in err  # the folder was made first
    assert out.is_dir() and os.listdir(out) == []


@pytest.fixture(scope="module")
def npy_run(tmp_path_factory):
    """Embeddings in the reference's .npy layout and a config: 6 optimizer steps, an evaluation and a checkpoint
    every 2."""
    import numpy as np
    import yaml

    folder = tmp_path_factory.mktemp("npy-run")
    rng = np.random.default_rng(0)
    for label, shift in (("0_cool", -0.3), ("1_warm", 0.3)):
        (folder / "data" / "CLIP" / label).mkdir(parents=True)
        for i in range(12):
            np.save(folder / "data" / "CLIP" / label / f"{i:03d}.npy",
                    (rng.standard_normal((1, 768)) * 0.5 + shift).astype(np.float32))
    config = {"model": {"base": "Cut", "rev": "v1", "arch": "class"},
              "train": {"lr": 3e-3, "steps": 48, "batch": 8, "val_fraction": 0.25, "seed": 3, "eval_every": 2},
              "labels": {0: {"name": "Cool"}, 1: {"name": "Warm"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture
def train_disk(tmp_path):
    """A tmpfs big enough for a class head (16 MB) and two checkpoints (65 MB each, old and new), to be filled."""
    yield mounted(tmp_path / "disk", "192m")
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=False)


def filling(disk, real, freed, when=1, leave=0):
    """`real`, wrapped: its `when`-th call first fills `disk` (leaving `leave` bytes); `freed` gets the freeing."""
    calls = [0]

    def wrapped(*a, **kw):
        calls[0] += 1
        if calls[0] == when:
            freed.append(fill(disk, leave))
        return real(*a, **kw)
    return wrapped


def digest(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def train_argv(npy_run, out):
    return ["train", "--config", npy_run / "config.yaml", "--data", npy_run / "data", "--out", out, "--no-progress"]


def full_disk_error(err, name):
    assert "disk is full" in err and name in err and "free some space" in err and "bug" not in err, err


def no_train_temporaries(out):
    return not [p for p in os.listdir(out) if p.endswith(".tmp") or "cityclf" in p]


@pytest.mark.parametrize("where", ["checkpoint", "log"])
def test_train_on_a_full_disk_mid_run_is_a_clear_error_and_resumes(npy_run, train_disk, monkeypatch, capsys, where):
    """The disk fills just before train's second checkpoint, or before its log's first line: exit 2 naming that
    file; the first checkpoint kept byte for byte (a log cut back to its whole rows); no temporary; once space
    is freed, the same command (--resume after a checkpoint) finishes."""
    from cityclf_core.train import loop

    out = train_disk / "out"
    argv, freed, kept = train_argv(npy_run, out), [], {}
    if where == "checkpoint":
        real_save = loop.save_checkpoint

        def save_and_remember(path, *a, **kw):
            real_save(path, *a, **kw)
            kept[path] = digest(path)
        monkeypatch.setattr(loop, "save_checkpoint", filling(train_disk, save_and_remember, freed, when=2))
        name, rerun = "Cut-v1.checkpoint.safetensors", ["--resume"]
    else:
        monkeypatch.setattr(loop, "TrainLog", filling(train_disk, loop.TrainLog, freed))
        name, rerun = "Cut-v1.csv", []  # killed before its first checkpoint: simply run again
    code, err = run(argv, capsys)
    assert freed and code == 2, err
    full_disk_error(err, name)
    if where == "checkpoint":
        assert [digest(p) for p in kept] == list(kept.values())
    else:
        assert (out / name).read_bytes() == b"" and not (out / "Cut-v1.safetensors").exists()
    assert no_train_temporaries(out), os.listdir(out)
    freed[0]()
    code, err = run(argv + rerun, capsys)
    assert code == 0, err
    assert (out / "Cut-v1.safetensors").stat().st_size > 1 << 20
    assert not (out / "Cut-v1.checkpoint.safetensors").exists()


def test_train_on_a_full_disk_at_the_end_keeps_the_earlier_files_and_resumes(npy_run, train_disk, monkeypatch,
                                                                             capsys):
    """An earlier head, sidecar, metrics and curves are replaced (--overwrite) while the disk fills just before
    the head (with room for the sidecar, not the weights), the sidecar, the metrics, the curves: each time exit 2
    naming that file, the files not yet written byte for byte as before (head and sidecar together), no
    temporary, the checkpoint kept; --resume after freeing space goes on to the next, then finishes."""
    from cityclf_core.train import loop

    out = train_disk / "out"
    out.mkdir()
    names = ["Cut-v1.safetensors", "Cut-v1.config.json", "Cut-v1.metrics.json", "Cut-v1.png"]
    for old in names:
        (out / old).write_bytes(f"an earlier run's {old}".encode())
    before = {old: digest(out / old) for old in names}
    argv = train_argv(npy_run, out) + ["--overwrite"]
    steps = [("save_head", 64 << 10, "Cut-v1.safetensors", names),
             ("save_head", 0, "Cut-v1.config.json", names),
             ("write_metrics", 0, "Cut-v1.metrics.json", names[2:]),
             ("draw_curves", 0, "Cut-v1.png", names[3:])]
    for function, leave, name, untouched in steps:
        freed = []
        with monkeypatch.context() as m:
            m.setattr(loop, function, filling(train_disk, getattr(loop, function), freed, leave=leave))
            code, err = run(argv, capsys)
        assert freed and code == 2, err
        full_disk_error(err, name)
        assert {old: digest(out / old) for old in untouched} == {old: before[old] for old in untouched}
        assert no_train_temporaries(out) and (out / "Cut-v1.checkpoint.safetensors").exists(), os.listdir(out)
        freed[0]()
        argv = train_argv(npy_run, out) + ["--overwrite", "--resume"]
    code, err = run(argv, capsys)
    assert code == 0, err
    assert all(digest(out / old) != before[old] for old in names)
    assert not (out / "Cut-v1.checkpoint.safetensors").exists()


def test_a_ray_shard_on_a_full_disk_is_a_clear_error_and_leaves_no_temporary(small_disk):
    """The Ray engine's driver writes each shard with write_shard: on a full disk an OSError naming the shard
    (the command maps it to exit 2, as for every writer), no temporary, the shards before it kept."""
    pytest.importorskip("pyarrow")
    from cityclf_core.engines import parquet
    from cityclf_core.errors import file_system_error

    encoders = [{"identity": "clip-a", "name": "a", "source": "/clips/a", "image_size": 32, "embed_dim": 256}]

    def rows(n):
        import numpy as np

        emb = np.random.default_rng(n).standard_normal((2, 256)).astype(np.float32)
        return [{"path": f"/d/{n}-{i}.png", "size": 10, "mtime_ns": 5, "content": f"c{n}{i}", "width": 3,
                 "height": 2, "status": "ok", "error": None, "notes": [],
                 "embeddings": [parquet.embedding_cell("clip-a", "tiles:64:1536:up", emb)], "scores": []}
                for i in range(40)]

    shards = small_disk / "shards"
    first = parquet.write_shard(shards, "shard-1", rows(1), encoders)
    before = first.read_bytes()
    free = fill(small_disk)
    with pytest.raises(OSError) as e:
        parquet.write_shard(shards, "shard-2", rows(2), encoders)
    error = file_system_error(e.value)
    assert error is not None and "shard-2.parquet" in str(error) and "disk is full" in str(error), e.value
    assert os.listdir(shards) == ["shard-1.parquet"] and first.read_bytes() == before
    free()
    assert parquet.write_shard(shards, "shard-2", rows(2), encoders).exists()
