"""Odd files never stop a run: names that are not UTF-8, symbolic link loops, and the like."""

from __future__ import annotations

import base64
import json
import os

import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.scoring.images import find_images
from cityclf_core.store import EmbeddingStore

LATIN1 = b"caf\xe9.png"  # a name written by a Latin-1 system: not UTF-8
BROKEN = b"bro\xffken.png"


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def odd_names(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(illustration(40, 30, 1)).save(folder / "plain.png")
    Image.fromarray(illustration(44, 30, 2)).save(os.path.join(os.fsencode(folder), LATIN1))
    with open(os.path.join(os.fsencode(folder), BROKEN), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    return folder


def test_names_that_are_not_utf8_are_embedded_scored_reported_and_copied(odd_names, tmp_path, tiny_clip_dir,
                                                                         score_head_path, capsys):
    db, report = tmp_path / "s.db", tmp_path / "report.jsonl"
    common = ["-m", str(score_head_path), "--clip", str(tiny_clip_dir), "--no-progress"]
    code, out, err = run(["embed", str(odd_names), "--store", str(db), "--report", str(report), *common], capsys)
    assert code == 1 and "2 embedded" in err and "1 skipped" in err  # only the broken file is skipped
    line = json.loads(report.read_bytes().decode("utf-8"))  # valid UTF-8
    assert line["path"].endswith("bro\\xffken.png") and base64.b64decode(line["path_b64"]).endswith(BROKEN)
    with EmbeddingStore(db) as store:  # stored exactly: the bytes come back
        names = {os.fsencode(os.path.basename(r.path)) for r in store.files()}
        assert names == {b"plain.png", LATIN1}
    code, out, err = run(["score", str(odd_names), "--store", str(db), "--format", "jsonl", *common], capsys)
    assert code == 1 and "0 embedded, 2 already in the store" in err  # found again by its stored path
    rows = [json.loads(x) for x in out.encode("utf-8").decode("utf-8").splitlines()]
    odd = [r for r in rows if "path_b64" in r]
    assert len(rows) == 2 and len(odd) == 1 and odd[0]["path"].endswith("caf\\xe9.png")
    assert os.path.isfile(base64.b64decode(odd[0]["path_b64"]))  # a reader can open the file from it
    for fmt in ("csv", "table"):
        code, out, _ = run(["query", "--store", str(db), "--format", fmt], capsys)
        assert code == 0 and "caf\\xe9.png" in out.encode("utf-8").decode("utf-8")
    dest = tmp_path / "dest"
    code, out, err = run(["query", "--store", str(db), "--min", "0", "--copy", str(dest)], capsys)
    assert code == 0 and sorted(os.listdir(os.fsencode(dest))) == sorted([b"plain.png", LATIN1])
    assert "caf\\xe9.png" in err


def test_a_symlink_loop_is_skipped_and_reported(tmp_path, tiny_clip_dir, score_head_path, capsys):
    folder = tmp_path / "links"
    folder.mkdir()
    Image.fromarray(illustration(40, 30)).save(folder / "good.png")
    os.symlink(folder / "b.png", folder / "a.png")
    os.symlink(folder / "a.png", folder / "b.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    files, problems = find_images([folder, folder / "a.png"])
    assert files == [folder / "good.png"]
    why = {p.name: r for p, r in problems}
    assert set(why) == {"a.png", "b.png", "dangling.png"} and "loop" in why["a.png"] and "does not exist" in \
        why["dangling.png"]
    code, out, err = run(["embed", str(folder), "--store", str(tmp_path / "s.db"), "-m", str(score_head_path),
                          "--clip", str(tiny_clip_dir), "--no-progress"], capsys)
    assert code == 1 and "1 embedded" in err and err.count("symbolic link loop") == 2
