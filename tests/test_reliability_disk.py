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


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill ({r.stderr.strip() or 'mount failed'}); needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk):
    """Fill the disk: a file grows until the system says ENOSPC. Returns a function that frees it again."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
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
