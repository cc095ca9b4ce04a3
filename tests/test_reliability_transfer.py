"""Copy and move survive a kill at any moment: nothing lost, nothing truncated, no duplicates, the store follows.

The kill tests run the `cityclf` command (its `main`) in a child process and
SIGKILL it at seeded random points of its work, within one file system and
across two (the destination on a tmpfs), then run the same command again and
check every file: exactly one place, its original bytes, no truncated or `-1`
files, no temporaries, every store row pointing at a file that exists, and
SQLite's integrity check. A point is an operation the command reaches (its
N-th file-system operation or store commit, see `kill_points.py`), never a
moment on the clock, so the kills land mid-work on a fast machine as on a slow
one. Most trials fork this already-loaded process so that each costs
milliseconds, not the seconds of a fresh interpreter importing torch; a few
trials start the real command in a fresh interpreter to cover the entry point.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import kill_points
import pytest
from conftest import ROOT, illustration
from PIL import Image

from cityclf_core.cli import main
TEMP_SUFFIX = ".cityclf-part"  # our temporaries (cityclf_core/dataset/safe_files.py)

TRIALS = 20
N_IMAGES = 24
forks = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill trials fork this process (POSIX only)")


# ---------------------------------------------------------------- a scored dataset, copied per trial


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_clip_dir, score_head_path):
    """A folder of tiny images (some with caption sidecars) and a store holding their scores."""
    base = tmp_path_factory.mktemp("template")
    data = base / "data"
    for i in range(N_IMAGES):
        folder = data / ("sub" if i % 3 == 0 else "") / ("deep" if i % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(illustration(24 + i % 4, 20, i)).save(folder / f"im{i:02d}.png")
        if i % 2 == 0:
            (folder / f"im{i:02d}.txt").write_text(f"caption {i}, 1girl\n")
        if i % 7 == 0:
            (folder / f"im{i:02d}.json").write_text('{"caption": "x"}\n')
    db = base / "s.db"
    assert main(["score", str(data), "--store", str(db), "-m", str(score_head_path), "--clip", str(tiny_clip_dir),
                 "--no-progress", "--format", "csv"]) == 0
    return base


def contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fresh_copy(template: Path, where: Path, dest_parent: Path) -> tuple[Path, Path, Path]:
    """The template's data and store under `where` (store paths rewritten), and a destination under dest_parent."""
    shutil.copytree(template / "data", where / "data")
    shutil.copy2(template / "s.db", where / "s.db")
    con = sqlite3.connect(where / "s.db")
    old, new = str(template / "data"), str(where / "data")
    with con:
        for table in ("files", "scores"):
            con.execute(f"UPDATE {table} SET path = ? || substr(path, ?)", (new, len(old) + 1))
    con.close()
    dest_parent.mkdir(parents=True, exist_ok=True)
    return where / "data", where / "s.db", dest_parent / "out"


def query_argv(db: Path, dest: Path, verb: str) -> list[str]:
    return ["query", "--store", str(db), "--min", "0", f"--{verb}", str(dest), "--format", "csv"]


def run_forked(argv: list[str], kill_at: str | None = None) -> int | None | dict:
    """main(argv) in a forked child.

    kill_at: a kill point spec (``any:N``): the child stops there and is SIGKILLed; None if it was killed,
    its exit code if it finished first. ``"count"``: run whole and return how many kill points it reached.
    """
    code, reached = kill_points.run_forked(lambda: main(argv), kill_at)
    if kill_at == "count":
        assert code == 0
        return reached
    return code


def store_state(db: Path) -> tuple[str, list[str], list[str], int]:
    con = sqlite3.connect(db)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        files = [os.fsdecode(r[0]) if isinstance(r[0], bytes) else r[0] for r in con.execute("SELECT path FROM files")]
        scored = [r[0] for r in con.execute("SELECT DISTINCT path FROM scores")]
        journal = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'moves'").fetchone()  # made by a move
        pending = con.execute("SELECT COUNT(*) FROM moves").fetchone()[0] if journal else 0
    finally:
        con.close()
    return check, files, scored, pending


def assert_consistent(original: dict[str, bytes], data: Path, dest: Path, db: Path, verb: str) -> None:
    """After the rerun: each file in exactly one place (copy: both) with its bytes; the store follows."""
    left, arrived = contents(data), contents(dest) if dest.exists() else {}
    junk = [name for name in arrived if name.endswith(TEMP_SUFFIX) or "-1." in name]
    assert not junk, f"temporaries or duplicates at the destination: {junk}"
    if verb == "move":
        assert left == {} and arrived == original
    else:
        assert left == original and arrived == original
    check, files, scored, pending = store_state(db)
    assert check == "ok" and pending == 0
    assert len(files) == N_IMAGES and all(os.path.isfile(p) for p in files)
    assert all(os.path.isfile(p) for p in scored)
    home = dest if verb == "move" else data
    assert sorted(files) == sorted(str(home / name) for name in original if name.endswith(".png"))


def kill_trials(template: Path, work: Path, dest_parent: Path, verb: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    original = contents(template / "data")
    data, db, dest = fresh_copy(template, work / "baseline", dest_parent / "baseline")
    points = run_forked(query_argv(db, dest, verb), kill_at="count")["any"]  # what a whole run reaches
    assert points > N_IMAGES  # at least one operation per file, or the trials would not aim inside the work
    assert_consistent(original, data, dest, db, verb)
    outcomes = []
    for trial in range(TRIALS):
        data, db, dest = fresh_copy(template, work / f"t{trial}", dest_parent / f"t{trial}")
        code = run_forked(query_argv(db, dest, verb), kill_at=f"any:{rng.randint(1, points)}")
        outcomes.append("killed" if code is None else "finished")
        if code is None:  # in between: every file somewhere, whole (both places only as the same bytes)
            for name, data_bytes in original.items():
                here = [p.read_bytes() for p in (data / name, dest / name) if p.exists()]
                assert here and all(b == data_bytes for b in here), name
        assert run_forked(query_argv(db, dest, verb)) == 0, f"trial {trial}: the rerun failed"
        assert_consistent(original, data, dest, db, verb)
        shutil.rmtree(work / f"t{trial}")
        shutil.rmtree(dest_parent / f"t{trial}")
    return outcomes


@pytest.fixture
def other_fs(tmp_path):
    """A folder on another file system than tmp_path: /dev/shm, else a tmpfs mounted here (as root)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        folder = Path(tempfile.mkdtemp(prefix="cityclf-test-", dir=shm))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
        return
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("no second file system: /dev/shm is missing or on the same device, and mounting a tmpfs "
                    "needs root")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


@forks
@pytest.mark.parametrize("verb", ["move", "copy"])
def test_kill_at_random_points_same_file_system(template, tmp_path, verb):
    outcomes = kill_trials(template, tmp_path / "work", tmp_path / "dest", verb, seed=10 if verb == "move" else 11)
    assert outcomes.count("killed") >= TRIALS // 2  # the kills mostly landed inside the run


@forks
@pytest.mark.parametrize("verb", ["move", "copy"])
def test_kill_at_random_points_across_file_systems(template, tmp_path, other_fs, verb):
    assert os.stat(other_fs).st_dev != os.stat(tmp_path).st_dev
    outcomes = kill_trials(template, tmp_path / "work", other_fs, verb, seed=20 if verb == "move" else 21)
    assert outcomes.count("killed") >= TRIALS // 2


def real_command(spec: str, argv: list[str], counts: Path | None = None) -> subprocess.Popen:
    """`python -m cityclf_core ARGV` in a fresh interpreter, stopping at kill point `spec` (kill_points.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if counts is not None:
        env["CITYCLF_KILL_POINTS_COUNT"] = str(counts)
    return subprocess.Popen([sys.executable, str(Path(kill_points.__file__)), spec, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("verb", ["move", "copy"])
def test_kill_the_real_command(template, tmp_path, verb):
    """The entry point in a fresh interpreter, killed at a seeded point of its work on the destination."""
    rng = random.Random(30 if verb == "move" else 31)
    original = contents(template / "data")
    data, db, dest = fresh_copy(template, tmp_path / "count", tmp_path / "count-dest")  # where its work lies
    work = run_forked(query_argv(db, dest, verb), kill_at="count")["any"]
    data, db, dest = fresh_copy(template, tmp_path / "whole", tmp_path / "whole-dest")
    proc = real_command("count", query_argv(db, dest, verb), counts=tmp_path / "counts.json")
    assert proc.wait(timeout=300) == 0
    total = json.loads((tmp_path / "counts.json").read_text())["any"]  # start-up's own operations, then the work
    assert total >= work
    for trial in range(1):  # a fresh interpreter costs seconds: once per verb
        data, db, dest = fresh_copy(template, tmp_path / f"t{trial}", tmp_path / f"d{trial}")
        proc = real_command(f"any:{total - work + rng.randint(1, work)}", query_argv(db, dest, verb))
        assert kill_points.wait_stopped_or_exited(proc.pid) is None, "the command finished before its kill point"
        kill_points.signal_stopped(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        rerun = subprocess.run([sys.executable, "-m", "cityclf_core", *query_argv(db, dest, verb)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert_consistent(original, data, dest, db, verb)


# ---------------------------------------------------------------- moves without a kill


def test_moving_twice_and_in_parts_never_nests_the_destination(template, tmp_path, capsys):
    data, db, dest = fresh_copy(template, tmp_path, tmp_path)
    original = contents(data)
    assert main(["query", "--store", str(db), "--top", "3", "--move", str(dest)]) == 0  # some files first
    assert main(["query", "--store", str(db), "--min", "0", "--move", str(dest)]) == 0  # then all
    assert main(["query", "--store", str(db), "--min", "0", "--move", str(dest)]) == 0  # and again
    err = capsys.readouterr().err
    assert not (dest / "out").exists() and contents(dest) == original and contents(data) == {}
    assert err.count("already there") >= N_IMAGES
    assert_consistent(original, data, dest, db, "move")


def test_a_journaled_move_is_finished_by_the_next_run(template, tmp_path, capsys):
    """A move recorded but not done (as a kill right after the journal commit leaves it) is completed."""
    from cityclf_core.store import EmbeddingStore

    data, db, dest = fresh_copy(template, tmp_path, tmp_path)
    original = contents(data)
    first = sorted(p for p in original if p.endswith(".png"))[0]
    with EmbeddingStore(db) as store:
        store.plan_moves([(str(data / first), str(dest / first), True)])
    os.makedirs(dest / Path(first).parent, exist_ok=True)
    os.link(data / first, dest / first)  # killed between link and unlink
    assert main(["query", "--store", str(db), "--min", "0", "--format", "csv", "--dry-run"]) == 0
    assert "interrupted move of 1 file(s) is unfinished" in capsys.readouterr().err  # a dry run changes nothing
    assert (data / first).exists()
    assert main(["query", "--store", str(db), "--min", "0", "--format", "csv"]) == 0
    assert "finished an interrupted move: 1 file(s)" in capsys.readouterr().err
    assert not (data / first).exists() and (dest / first).read_bytes() == original[first]
    check, files, _, pending = store_state(db)
    assert pending == 0 and str(dest / first) in files and str(data / first) not in files


def test_captions_travel_with_their_image(template, tmp_path, capsys):
    data, db, dest = fresh_copy(template, tmp_path, tmp_path)
    assert main(["query", "--store", str(db), "--min", "0", "--copy", str(dest)]) == 0
    assert contents(dest) == contents(data)  # .txt and .json sidecars included
    (data / "im02.txt").write_text("caption 2, 1girl, edited\n")  # edited since: never overwritten
    assert main(["query", "--store", str(db), "--min", "0", "--copy", str(dest)]) == 0
    err = capsys.readouterr().err
    assert (dest / "im02.txt").read_text() == "caption 2, 1girl\n" and "holds other text" in err
    assert not list(dest.rglob("*-1.*"))
    out2 = tmp_path / "moved"
    assert main(["query", "--store", str(db), "--min", "0", "--move", str(out2)]) == 0
    assert (out2 / "im14.txt").is_file() and (out2 / "im14.json").is_file() and not (data / "im14.txt").exists()


def test_a_link_at_the_destination_is_never_taken_for_the_file(template, tmp_path):
    """dest/im01.png -> data/im01.png looks like the same bytes; moving must not delete what it points at."""
    data, db, dest = fresh_copy(template, tmp_path, tmp_path)
    original = contents(data)
    dest.mkdir()
    os.symlink(data / "im01.png", dest / "im01.png")
    assert main(["query", "--store", str(db), "--min", "0", "--move", str(dest)]) == 0
    assert (dest / "im01-1.png").read_bytes() == original["im01.png"]  # moved beside the link, as a conflict
    assert os.path.islink(dest / "im01.png")
