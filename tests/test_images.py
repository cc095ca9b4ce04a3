"""Decoding image files: odd modes are converted right, bad files get a reason naming them."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from conftest import illustration
from PIL import Image

from cityclf_core import ImageError, decode_image, find_images
from cityclf_core.scoring.images import iter_decoded


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_png_round_trips(tmp_path):
    arr = illustration(64, 48)
    d = decode_image(save(Image.fromarray(arr), tmp_path / "a.png"))
    assert d.pixels.shape == (48, 64, 3) and np.array_equal(d.pixels.numpy(), arr)
    assert d.notes == []


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    d = decode_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    px = d.pixels.numpy()
    assert tuple(px[0, 0]) == (200, 0, 0) and tuple(px[9, 9]) == (255, 255, 255)
    assert "transparency composited onto white" in d.notes


def test_palette_with_transparency_and_grayscale(tmp_path):
    gray = Image.fromarray(np.full((8, 8), 77, np.uint8), "L")
    d = decode_image(save(gray, tmp_path / "g.png"))
    assert d.pixels.shape == (8, 8, 3) and int(d.pixels[0, 0, 2]) == 77
    pal = Image.fromarray(illustration(16, 16)).convert("P")
    pal.info["transparency"] = 0
    d = decode_image(save(pal, tmp_path / "p.png", transparency=0))
    assert d.pixels.shape == (16, 16, 3)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    d = decode_image(save(img, tmp_path / "deep.png"))
    assert d.pixels[0, :, 0].tolist() == [0, 128, 255, 1]
    assert "16-bit reduced to 8-bit" in d.notes


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.fromarray(illustration(40, 30)).convert("CMYK")
    d = decode_image(save(cmyk, tmp_path / "c.jpg"))
    assert d.pixels.shape == (30, 40, 3)
    ref = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))
    assert np.abs(d.pixels.numpy().astype(int) - ref.astype(int)).max() <= 1


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(illustration(60, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(img, tmp_path / "r.jpg", exif=exif)
    d = decode_image(path)
    assert d.pixels.shape == (60, 20, 3)  # displayed portrait
    assert any("EXIF orientation 6" in n for n in d.notes)
    assert d.size == (60, 20)


def test_tiny_and_animated(tmp_path):
    d = decode_image(save(Image.new("RGB", (1, 1), (9, 8, 7)), tmp_path / "one.png"))
    assert d.pixels.shape == (1, 1, 3)
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    d = decode_image(path)
    assert tuple(d.pixels[0, 0].tolist()) == (255, 0, 0)
    assert "animated: first of 3 frames scored" in d.notes


def test_large_images_are_reduced_while_decoding(tmp_path):
    img = Image.fromarray(np.tile(illustration(100, 100), (40, 40, 1)))  # 4000 x 4000
    path = save(img, tmp_path / "big.jpg", quality=80)
    d = decode_image(path, reduce_above=1_000_000)
    assert min(d.pixels.shape[:2]) >= 1536 and max(d.pixels.shape[:2]) < 4000
    assert d.size == (4000, 4000) and any("reduced from 4000x4000" in n for n in d.notes)
    png = save(img, tmp_path / "big.png")
    d = decode_image(png, reduce_above=1_000_000)
    assert d.pixels.shape[:2] == (2000, 2000)


def test_decompression_bomb_is_refused(tmp_path):
    path = save(Image.new("RGB", (3000, 3000)), tmp_path / "bomb.png")
    with pytest.raises(ImageError, match=r"bomb.png: 3000x3000 is 9,000,000 pixels, over the limit"):
        decode_image(path, max_pixels=1_000_000)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"this is not an image at all", "not an image"),
        (b"", "not an image"),
    ],
)
def test_not_images(tmp_path, data, message):
    path = tmp_path / "fake.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=message) as e:
        decode_image(path)
    assert "fake.png" in str(e.value)


def test_truncated_files(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(illustration(300, 300)).save(buf, "PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="t.png: truncated or corrupt"):
        decode_image(tmp_path / "t.png")
    buf = io.BytesIO()
    Image.fromarray(illustration(300, 300)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:600])
    with pytest.raises(ImageError, match="t.jpg: truncated or corrupt"):
        decode_image(tmp_path / "t.jpg")


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        decode_image(tmp_path)
    if os.geteuid() != 0:  # root reads anything
        p = save(Image.new("RGB", (4, 4)), tmp_path / "locked.png")
        p.chmod(0)
        with pytest.raises(ImageError, match="permission denied"):
            decode_image(p)


def test_find_images_walks_folders_recursively(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for p in ["x.png", "a/y.JPG", "a/b/z.webp", "a/notes.txt", ".hidden/h.png"]:
        (tmp_path / p).write_bytes(b"x")
    found, problems = find_images([tmp_path, tmp_path / "a" / "notes.txt", tmp_path / "missing"])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["x.png", "a/y.JPG", "a/b/z.webp", "a/notes.txt"]
    assert [(p.name, why) for p, why in problems] == [("missing", "no such file or folder")]


def test_iter_decoded_keeps_order_and_reports_failures(tmp_path):
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        if i == 3:
            p.write_bytes(b"garbage")
        else:
            Image.fromarray(illustration(20 + i, 20)).save(p)
        paths.append(p)
    out = list(iter_decoded(paths, workers=2, prefetch=2))
    assert [p for p, _, _ in out] == paths
    assert [e is None for _, _, e in out] == [True, True, True, False, True, True, True]
    assert [d.pixels.shape[1] for _, d, _ in out if d is not None] == [20, 21, 22, 24, 25, 26]
