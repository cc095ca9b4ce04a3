"""Caption sidecars: line endings kept, odd files skipped and reported, links confined, atomic writes."""

from __future__ import annotations

import os
import threading

import pytest

from cityclf_core.errors import ImageError
from cityclf_core.sidecars import (
    SidecarError,
    merge_caption,
    sidecar_path,
    update_sidecars,
    write_sidecar,
)


def owned(tag: str) -> bool:
    return tag.startswith("aesthetic_") or tag == "jpeg_artifacts"


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "img.png"
    p.write_bytes(b"not decoded here")
    return p


def test_tags_module_still_exports_the_sidecar_functions():
    from cityclf_core import tags

    assert tags.write_sidecar is write_sidecar and tags.sidecar_path is sidecar_path
    assert tags.merge_caption is merge_caption


@pytest.mark.parametrize("nl", ["\r\n", "\r", "\n"])
def test_line_endings_are_kept(image, nl):
    side = sidecar_path(image)
    side.write_bytes(f"1girl, aesthetic_10,{nl}smile{nl}".encode())
    assert write_sidecar(image, ["aesthetic_70"], owned)[1]
    data = side.read_bytes().decode()
    assert data == f"1girl,{nl}smile, aesthetic_70{nl}"
    other = {"\r\n", "\r", "\n"} - {nl}
    assert not any(o in data.replace(nl, "") for o in other)
    assert write_sidecar(image, ["aesthetic_70"], owned) == (side, False)  # rerun: byte-identical


def test_crlf_file_without_final_newline_gets_crlf(image):
    side = sidecar_path(image)
    side.write_bytes(b"a,\r\nb")
    write_sidecar(image, ["jpeg_artifacts"], owned)
    assert side.read_bytes() == b"a,\r\nb, jpeg_artifacts\r\n"


def test_byte_order_mark_is_kept(image):
    side = sidecar_path(image)
    side.write_bytes("\ufeffsolo\n".encode())
    write_sidecar(image, ["aesthetic_50"], owned)
    assert side.read_bytes() == "\ufeffsolo, aesthetic_50\n".encode()


def test_non_utf8_sidecar_is_skipped_and_the_others_are_written(tmp_path):
    imgs = []
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.png").write_bytes(b"x")
        imgs.append(tmp_path / f"{name}.png")
    bad = b"caf\xe9, aesthetic_10\n"  # Latin-1
    (tmp_path / "b.txt").write_bytes(bad)
    report = update_sidecars([(p, ["aesthetic_70"]) for p in imgs], owned)
    assert [p.name for p in report.updated] == ["a.txt", "c.txt"]
    assert [p.name for p, _ in report.skipped] == ["b.txt"] and "not UTF-8" in report.skipped[0][1]
    assert (tmp_path / "b.txt").read_bytes() == bad
    assert (tmp_path / "c.txt").read_text() == "aesthetic_70\n"
    assert "1 skipped" in report.summary()


def test_directory_and_fifo_sidecars_are_skipped_without_hanging(tmp_path):
    for name in ("d", "f", "ok"):
        (tmp_path / f"{name}.png").write_bytes(b"x")
    (tmp_path / "d.txt").mkdir()
    os.mkfifo(tmp_path / "f.txt")
    result = {}

    def run():
        result["report"] = update_sidecars([(tmp_path / f"{n}.png", ["aesthetic_70"]) for n in ("d", "f", "ok")],
                                           owned)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "writing next to a FIFO hung"
    report = result["report"]
    reasons = dict((p.name, why) for p, why in report.skipped)
    assert "a directory" in reasons["d.txt"] and "FIFO" in reasons["f.txt"]
    assert [p.name for p in report.updated] == ["ok.txt"]
    assert (tmp_path / "d.txt").is_dir() and (tmp_path / "f.txt").is_fifo()


def test_symlinked_sidecar_writes_through_inside_the_roots_only(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "captions").mkdir()
    for n in ("in", "out"):
        (root / f"{n}.png").write_bytes(b"x")
    (root / "captions" / "in.txt").write_text("solo\n")
    (outside / "victim.txt").write_text("keep me\n")
    os.symlink(root / "captions" / "in.txt", root / "in.txt")
    os.symlink(outside / "victim.txt", root / "out.txt")
    report = update_sidecars([(root / "in.png", ["aesthetic_70"]), (root / "out.png", ["aesthetic_70"])], owned,
                             allowed_roots=[root])
    assert (root / "in.txt").is_symlink()  # still a link, its target updated
    assert (root / "captions" / "in.txt").read_text() == "solo, aesthetic_70\n"
    assert (outside / "victim.txt").read_text() == "keep me\n" and (root / "out.txt").is_symlink()
    assert [p.name for p, _ in report.skipped] == ["out.txt"] and "outside the allowed" in report.skipped[0][1]
    with pytest.raises(SidecarError, match="outside the allowed"):
        write_sidecar(root / "out.png", ["aesthetic_70"], owned, allowed_roots=[root])


def test_write_is_atomic_under_a_random_exclusive_name(image, monkeypatch):
    side = sidecar_path(image)
    side.write_text("solo\n")
    os.chmod(side, 0o640)
    planted = image.parent / f".{side.name}.cityclf-tmp"  # the old, predictable name: a planted link
    target = image.parent / "planted-target"
    target.write_text("untouched\n")
    os.symlink(target, planted)
    made = []
    from cityclf_core.confined import Folder

    real = Folder.temporary

    def spy(self, *a, **kw):
        fd, name = real(self, *a, **kw)
        made.append(self.join(name))
        return fd, name

    monkeypatch.setattr(Folder, "temporary", spy)
    write_sidecar(image, ["aesthetic_70"], owned)
    assert target.read_text() == "untouched\n"
    assert len(made) == 1 and os.path.dirname(made[0]) == str(image.parent) and made[0] != str(planted)
    assert not os.path.exists(made[0])  # renamed into place
    assert side.read_text() == "solo, aesthetic_70\n" and (os.stat(side).st_mode & 0o777) == 0o640
    leftovers = [p.name for p in image.parent.iterdir() if p.name.endswith(".cityclf-tmp") and p != planted]
    assert leftovers == []


def test_missing_image_is_an_error_before_anything_is_written(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ImageError, match="no such image file"):
        update_sidecars([(tmp_path / "a.png", ["aesthetic_70"]), (tmp_path / "gone.png", [])], owned)
    assert not (tmp_path / "a.txt").exists()
