"""Every writer of a store takes its lock: a second writer waits (saying for whom), then goes on; no row is lost.

Moments are events: an `embed` run stops itself right after taking the lock (CITYCLF_PAUSE_AT=lock:0, see
cityclf_core/pause_points.py), or the test process holds the lock itself; the second writer's "waiting"
line is read before the first is let go.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.store.lock import store_writer

ROOT = Path(__file__).resolve().parents[1]


def images(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(illustration(40 + i, 36, seed * 100 + i)).save(folder / f"im{i}.png")
    return folder


def embed(folder: Path, db: Path, clip: Path) -> None:
    assert main(["embed", str(folder), "--store", str(db), "--clip", str(clip), "--no-progress"]) == 0


def files_in(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {os.path.basename(os.path.dirname(r[0])) + "/" + os.path.basename(r[0])
                for r in con.execute("SELECT path FROM files")}


def cityclf(*argv: str, pause_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CITYCLF_LOCK_WAIT": "600"}
    env.pop("CITYCLF_PAUSE_AT", None)
    if pause_at:
        env["CITYCLF_PAUSE_AT"] = pause_at
    return subprocess.Popen([sys.executable, "-m", "cityclf_core", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def waiting_line(proc: subprocess.Popen) -> str:
    """The second writer's first "waiting" line (it blocks until the writer says it)."""
    for line in proc.stderr:
        if "waiting" in line:
            return line
    raise AssertionError(f"no waiting line; exit {proc.wait()}")


def embed_holding_the_lock(folder: Path, db: Path, clip: Path) -> subprocess.Popen:
    """A real `cityclf embed`, stopped just after it took the store's lock."""
    proc = cityclf("embed", str(folder), "--store", str(db), "--clip", str(clip), "--no-progress",
                   pause_at="lock:0")
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), proc.stderr.read()
    return proc


def finish(*procs: subprocess.Popen) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err


@pytest.fixture
def stores(tmp_path, tiny_clip_dir):
    a = images(tmp_path / "a", 3, 1)
    b = images(tmp_path / "b", 2, 2)
    embed(a, tmp_path / "A.db", tiny_clip_dir)
    embed(b, tmp_path / "B.db", tiny_clip_dir)
    return tmp_path


@pytest.mark.parametrize("second", ["merge", "prune"])
def test_a_merge_or_prune_during_embed_waits_and_loses_no_row(stores, tiny_clip_dir, second):
    new = images(stores / "new", 2, 3)
    if second == "prune":
        (stores / "a" / "im0.png").unlink()  # gone from disk: prune forgets it
    first = embed_holding_the_lock(new, stores / "A.db", tiny_clip_dir)
    argv = ["merge", str(stores / "B.db"), "--store", str(stores / "A.db")] if second == "merge" else \
        ["prune", "--store", str(stores / "A.db")]
    proc = cityclf(*argv)
    line = waiting_line(proc)
    assert f"process {first.pid}" in line and "embed" in line, line
    first.send_signal(signal.SIGCONT)
    finish(first, proc)
    expected = {"a/im0.png", "a/im1.png", "a/im2.png", "new/im0.png", "new/im1.png"}
    if second == "merge":
        expected |= {"b/im0.png", "b/im1.png"}
    else:
        expected -= {"a/im0.png"}
    assert files_in(stores / "A.db") == expected


def test_two_merges_into_one_store_both_land(stores, tiny_clip_dir):
    c = images(stores / "c", 2, 4)
    embed(c, stores / "C.db", tiny_clip_dir)
    target = stores / "T.db"  # a new store: the lock makes its file, so the two merges wait for each other
    with store_writer(target):
        one = cityclf("merge", str(stores / "B.db"), "--store", str(target))
        two = cityclf("merge", str(stores / "C.db"), "--store", str(target))
        for proc in (one, two):
            assert f"process {os.getpid()}" in waiting_line(proc)
    finish(one, two)  # whichever goes second re-locks the store the first renamed into place
    assert files_in(target) == {"b/im0.png", "b/im1.png", "c/im0.png", "c/im1.png"}


def test_a_writer_is_refused_after_its_wait_naming_the_holder_and_readers_never_wait(stores, monkeypatch,
                                                                                     capsys):
    monkeypatch.setenv("CITYCLF_LOCK_WAIT", "0")
    db = str(stores / "A.db")
    with store_writer(db):
        for argv in (["prune", "--store", db], ["merge", str(stores / "B.db"), "--store", db],
                     ["query", "--store", db, "--move", str(stores / "moved")]):
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2 and f"is in use: process {os.getpid()}" in err and "CITYCLF_LOCK_WAIT" in err, err
        for argv in (["store-info", "--store", db], ["export", "--store", db, "--out", str(stores / "e.npz")]):
            assert main(argv) == 0, capsys.readouterr().err
    assert files_in(stores / "A.db") == {"a/im0.png", "a/im1.png", "a/im2.png"}
    monkeypatch.setenv("CITYCLF_LOCK_WAIT", "soon")
    with store_writer(db, wait=0):
        assert main(["prune", "--store", db]) == 2
        assert "CITYCLF_LOCK_WAIT 'soon'" in capsys.readouterr().err


def test_a_reader_takes_the_lock_only_to_finish_an_interrupted_move(tmp_path, tiny_clip_dir, score_head_path,
                                                                     monkeypatch, capsys):
    """`query` and `dedupe` without --move finish a move a killed run left in the journal: that step writes, so
    it takes the store's lock like any writer; with nothing to finish they never wait."""
    from cityclf_core.store import EmbeddingStore

    data = images(tmp_path / "data", 2, 5)
    db = tmp_path / "S.db"
    assert main(["score", str(data), "--store", str(db), "-m", str(score_head_path), "--clip", str(tiny_clip_dir),
                 "--no-progress"]) == 0
    readers = (["query", "--store", str(db), "--min", "0", "--format", "csv"],
               ["dedupe", "--store", str(db), "--threshold", "0.999"])
    dest = tmp_path / "moved"
    dest.mkdir()
    monkeypatch.setenv("CITYCLF_LOCK_WAIT", "0")
    capsys.readouterr()
    with store_writer(db):  # another writer holds the store
        for argv in readers:  # nothing to finish: readers do not wait
            assert main(argv) == 0, capsys.readouterr().err
        with EmbeddingStore(db) as store:  # as a kill right after the journal's commit leaves it
            store.plan_moves([(str(data / "im0.png"), str(dest / "im0.png"), True)])
        for argv in readers:  # a move to finish: refused like a writer, nothing moved
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"is in use: process {os.getpid()}" in err, err
            assert (data / "im0.png").exists() and not (dest / "im0.png").exists()
    assert main(readers[0]) == 0
    assert "finished an interrupted move: 1 file(s)" in capsys.readouterr().err
    assert (dest / "im0.png").exists() and not (data / "im0.png").exists()
    assert files_in(db) == {"moved/im0.png", "data/im1.png"}
