"""Stores that can't be written, damaged stores, two runs on one store, and exit statuses that say which."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess

import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.store import EmbeddingStore
from cityclf_core.store.lock import store_writer


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def scored_store(tmp_path, tiny_clip_dir, score_head_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        Image.fromarray(illustration(40 + i, 30, i)).save(data / f"im{i}.png")
    db = tmp_path / "store" / "s.db"
    code, _, err = run(["score", str(data), "--store", str(db), "-m", str(score_head_path), "--clip",
                        str(tiny_clip_dir), "--no-progress", "--format", "csv"], capsys)
    assert code == 0, err
    with sqlite3.connect(db) as con:  # everything in the main file, as after a clean close
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return data, db


@pytest.fixture
def read_only(scored_store, tmp_path):
    """The store in a folder nobody may write: by permissions, or (as root, who ignores them) a read-only mount."""
    data, db = scored_store
    if os.geteuid() != 0:
        os.chmod(db, 0o444)
        os.chmod(db.parent, 0o555)
        yield data, db
        os.chmod(db.parent, 0o755)
        os.chmod(db, 0o644)
        return
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("running as root, where permissions do not stop writes, and no tmpfs can be mounted")
    try:
        (mnt / "s.db").write_bytes(db.read_bytes())
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True).returncode == 0
        yield data, mnt / "s.db"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_read_only_store_is_a_clear_error_before_any_clip_loads(read_only, score_head_path, tiny_clip_dir, capsys):
    data, db = read_only
    before = digest(db)
    code, _, err = run(["embed", str(data), "--store", str(db), "--clip", "/no/such/clip", "--no-progress"], capsys)
    assert code == 2 and "read-only" in err and str(db) in err and "clip" not in err.lower().split("read-only")[0]
    assert "/no/such/clip" not in err  # refused before the CLIP was even looked for
    code, _, err = run(["score", "--store", str(db), "-m", str(score_head_path), "--clip", str(tiny_clip_dir)],
                       capsys)
    assert code == 2 and "read-only" in err and "Traceback" not in err
    code, out, err = run(["query", "--store", str(db), "--format", "csv"], capsys)  # reading needs no writes
    assert code == 0 and len(out.splitlines()) == 7, err
    code, out, _ = run(["store-info", "--store", str(db), "--json"], capsys)
    assert code == 0 and '"files": 6' in out
    code, _, err = run(["query", "--store", str(db), "--min", "0", "--move", str(data.parent / "moved")], capsys)
    assert code == 2 and "read-only" in err and not (data.parent / "moved").exists()
    assert digest(db) == before


def damage(db) -> None:
    """Overwrite the first b-tree pages of the files and scores tables with noise."""
    con = sqlite3.connect(db)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    roots = [r[0] for r in con.execute("SELECT rootpage FROM sqlite_master WHERE name IN ('files', 'scores')")]
    con.close()
    with open(db, "r+b") as f:
        for root in roots:
            f.seek((root - 1) * page_size)
            f.write(bytes((i * 37 + 11) % 256 for i in range(page_size)))


def test_a_damaged_store_is_a_clear_error_and_left_untouched(scored_store, score_head_path, tiny_clip_dir, capsys):
    data, db = scored_store
    damage(db)
    before = digest(db)
    commands = [
        ["query", "--store", str(db)],
        ["store-info", "--store", str(db)],
        ["score", "--store", str(db), "-m", str(score_head_path), "--clip", str(tiny_clip_dir)],
        ["embed", str(data), "--store", str(db), "--clip", str(tiny_clip_dir), "--no-progress"],
        ["query", "--store", str(db), "--min", "0", "--move", str(data.parent / "moved")],
    ]
    for argv in commands:
        code, _, err = run(argv, capsys)
        assert code == 2, (argv[0], err)
        assert "damaged" in err and str(db) in err and "Traceback" not in err and "None" not in err
        assert digest(db) == before, argv[0]
    assert sorted(p.name for p in data.iterdir()) == [f"im{i}.png" for i in range(6)]


def test_a_second_embedding_run_on_one_store_is_refused(scored_store, tiny_clip_dir, score_head_path, capsys,
                                                        monkeypatch):
    data, db = scored_store
    monkeypatch.setenv("CITYCLF_LOCK_WAIT", "0")  # refused at once (waiting is tested in test_store_lock.py)
    with store_writer(db):  # a first run holds the store
        code, _, err = run(["embed", str(data), "--store", str(db), "--clip", "/no/such/clip", "--no-progress"],
                           capsys)
        assert code == 2 and "in use" in err and "/no/such/clip" not in err  # refused before loading CLIP
        code, _, err = run(["score", str(data), "--store", str(db), "-m", str(score_head_path), "--clip",
                            str(tiny_clip_dir), "--no-progress"], capsys)
        assert code == 2 and "in use" in err
    code, _, err = run(["embed", str(data), "--store", str(db), "--clip", str(tiny_clip_dir), "--no-progress"],
                       capsys)
    assert code == 0, err  # released when the first run ends


def test_an_internal_error_has_its_own_exit_status_and_a_traceback_only_with_debug(scored_store, monkeypatch,
                                                                                   capsys):
    _, db = scored_store

    def broken(self):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(EmbeddingStore, "stats", broken)
    code, _, err = run(["store-info", "--store", str(db)], capsys)
    assert code == 3 and "internal error: ZeroDivisionError: a bug" in err and "--debug" in err
    assert "Traceback" not in err
    for argv in (["--debug", "store-info", "--store", str(db)], ["store-info", "--store", str(db), "--debug"]):
        code, _, err = run(argv, capsys)
        assert code == 3 and "Traceback" in err and "ZeroDivisionError" in err
    code, _, err = run(["store-info", "--store", str(db.parent / "missing.db")], capsys)
    assert code == 2  # the user's mistakes stay 2, skipped inputs 1
