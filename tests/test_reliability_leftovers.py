"""No leftovers: the temporaries of a killed run (a caption's `.cityclf-tmp`, a copy's `.cityclf-part`, an
output's `.cityclf-tmp`) are removed by the next run of the same command on the same folder, and nothing
is removed outside the folders that run writes to (nor anything that is not a regular file of ours)."""

from __future__ import annotations

import os
import random

from conftest import illustration
from PIL import Image
from test_reliability_transfer import run_forked

from cityclf_core.cli import main

HEX = "0123456789abcdef"


def images(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(illustration(48, 40, i)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("solo\n")
    return folder


def ours(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith((".cityclf-tmp", ".cityclf-part")))


def plant(folder, names):
    for name in names:
        (folder / name).write_bytes(b"half written")


def test_leftovers_are_swept_from_the_folders_written_and_only_there(tmp_path, tiny_clip_dir, score_head_path,
                                                                      capsys):
    data, other, dest = images(tmp_path / "data"), tmp_path / "other", tmp_path / "dest"
    other.mkdir()
    dest.mkdir()
    leftovers = [f".img0.txt.{HEX}.cityclf-tmp", ".img1.txt.ab12_xy9.cityclf-tmp"]  # ours, and an older version's
    plant(data, leftovers)
    plant(other, leftovers)  # a folder this run does not write: left alone
    os.symlink(other / leftovers[0], data / f".img2.txt.{HEX[::-1]}.cityclf-tmp")  # not a regular file: kept
    (data / ".img3.txt.notours.cityclf-tmp").write_text("not a name we make")
    plant(dest, [f".img0.png.{HEX}.cityclf-part", f".img9.png.{HEX}.cityclf-part"])
    base = ["--clip", str(tiny_clip_dir), "-m", str(score_head_path), "--no-progress"]
    assert main(["score", str(data), "--write-tags", "--copy", str(dest), *base]) == 0, capsys.readouterr().err
    assert ours(data) == sorted([f".img2.txt.{HEX[::-1]}.cityclf-tmp", ".img3.txt.notours.cityclf-tmp"])
    assert ours(other) == sorted(leftovers) and ours(dest) == []
    export = tmp_path / "out" / "emb.npz"
    export.parent.mkdir()
    plant(export.parent, [f".emb.npz.{HEX}.cityclf-tmp"])
    db = tmp_path / "s.db"
    assert main(["score", str(data), "--store", str(db), *base]) == 0
    assert main(["export", "--store", str(db), "--out", str(export)]) == 0
    assert ours(export.parent) == [] and export.is_file()


def test_a_killed_write_tags_leaves_nothing_after_the_rerun(tmp_path, tiny_clip_dir, score_head_path, capsys):
    """Killed at seeded points among its file-system operations (tests/kill_points.py), then rerun."""
    data = images(tmp_path / "data", n=8)
    db = tmp_path / "s.db"
    assert main(["score", str(data), "--store", str(db), "--clip", str(tiny_clip_dir), "-m", str(score_head_path),
                 "--no-progress"]) == 0
    argv = ["query", "--store", str(db), "--min", "0", "--write-tags"]  # stored scores: the child forks no CLIP
    assert main(argv) == 0
    expected = {p.name: p.read_bytes() for p in data.glob("*.txt")}
    reset = lambda: [(data / n).write_text("solo\n") for n in expected]  # noqa: E731
    reset()
    base = run_forked(argv[:-1], kill_at="count")["fs"]  # the same run without tags
    reset()
    total = run_forked(argv, kill_at="count")["fs"]
    assert total > base
    rng, left_by_kills = random.Random(17), 0
    for _ in range(10):
        reset()
        assert run_forked(argv, kill_at=f"fs:{base + rng.randint(1, total - base)}") is None  # killed there
        left_by_kills += len(ours(data))
        for name, content in expected.items():  # every caption is the old one or the new one, whole
            assert (data / name).read_bytes() in (b"solo\n", content)
        assert main(argv) == 0
        assert ours(data) == [] and {p.name: p.read_bytes() for p in data.glob("*.txt")} == expected
    capsys.readouterr()
    print(f"kills: 10, temporaries they left: {left_by_kills}, left after the reruns: 0")
    assert left_by_kills, "no kill landed between a temporary's creation and its rename"
