"""File names at the limit: a name of exactly NAME_MAX (255) bytes, ASCII or multibyte UTF-8, is copied, moved
and tagged; a name derived from it (a numbered copy, a caption, a temporary) that would not fit is shortened
with a hash, the same way every time. Never an internal error, never a stop."""

from __future__ import annotations

import os

import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.confined import NAME_MAX, fit_name, temp_name

NAMES = {
    "ascii": "a" * 251 + ".png",
    "utf8-2": "a" + "é" * 125 + ".png",  # 2-byte characters up to the last byte
    "utf8-3": "猫" * 83 + "ab.png",  # 3-byte characters
}


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_names_at_the_limit_fit(name):
    assert len(name.encode()) == NAME_MAX
    for derived in (os.path.splitext(name)[0] + ".caption", os.path.splitext(name)[0] + "-1.png", name + ".json"):
        short = fit_name(derived)
        assert len(short.encode()) <= NAME_MAX and short == fit_name(derived)  # deterministic
        assert short.endswith(os.path.splitext(derived)[1]) and short.encode().decode() == short
        assert short != fit_name(derived + "x")  # a hash of the whole name tells them apart
    for suffix in (".cityclf-tmp", ".cityclf-part"):
        tmp = temp_name(name, suffix)
        assert len(tmp.encode()) <= NAME_MAX and tmp.endswith(suffix) and tmp.startswith(".")
    assert fit_name("short.png") == "short.png"


@pytest.fixture
def long_named(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(NAMES.values()):
        Image.fromarray(illustration(40, 30, i)).save(src / name, format="PNG")
    return src


def cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    assert "bug" not in err, err
    return code, err


def test_a_255_byte_name_is_tagged_copied_and_moved(long_named, tmp_path, tiny_clip_dir, score_head_path, capsys):
    base = ["--clip", str(tiny_clip_dir), "-m", str(score_head_path), "--no-progress"]
    code, err = cli(["score", str(long_named), "--write-tags", *base], capsys)
    assert code == 0, err
    for name in NAMES.values():
        side = long_named / (os.path.splitext(name)[0] + ".txt")
        assert side.read_text().startswith("testaesthetics_")
    dest = tmp_path / "dest"
    dest.mkdir()
    taken = NAMES["utf8-2"]
    (dest / taken).write_bytes(b"another file under this name")
    code, err = cli(["score", str(long_named), "--copy", str(dest), *base], capsys)
    assert code == 0, err
    for name in NAMES.values():
        if name != taken:
            assert (dest / name).read_bytes() == (long_named / name).read_bytes()
            assert (dest / (os.path.splitext(name)[0] + ".txt")).is_file()  # its caption travelled with it
    renamed = dest / fit_name(os.path.splitext(taken)[0] + "-1.png")
    assert renamed.read_bytes() == (long_named / taken).read_bytes()  # the numbered name, shortened
    assert (dest / taken).read_bytes() == b"another file under this name"
    assert not [p for p in os.listdir(dest) if "cityclf" in p]
    code, err = cli(["score", str(long_named), "--copy", str(dest), *base], capsys)  # rerun: all already there
    assert code == 0 and err.count("already there") == 3, err
    moved = tmp_path / "moved"
    code, err = cli(["score", str(long_named), "--move", str(moved), *base], capsys)
    assert code == 0, err
    assert sorted(os.listdir(moved)) == sorted(list(NAMES.values()) +
                                               [os.path.splitext(n)[0] + ".txt" for n in NAMES.values()])
    assert os.listdir(long_named) == []


def test_a_caption_name_that_would_not_fit_is_shortened(tmp_path):
    from cityclf_core.sidecars import sidecar_path, update_sidecars

    image = tmp_path / ("b" * NAME_MAX)  # no extension: `.txt` would make it 259 bytes
    image.write_bytes(b"x")
    report = update_sidecars([(image, ["aesthetic_70"])], lambda t: t.startswith("aesthetic_"))
    side = sidecar_path(image)
    assert report.updated == [side] and len(side.name) <= NAME_MAX and side.name.endswith(".txt")
    assert side.read_text() == "aesthetic_70\n"
