"""Valid images in every mode and size decode; a large file that is not an image costs no memory to refuse."""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.dataset import reader as reader_module
from cityclf_core.dataset.reader import FileReader, Known
from cityclf_core.errors import ImageError
from cityclf_core.scoring.images import decode_image

SIDE = 3072  # the smallest short side that large images are reduced at (2 x 1536)


def gradient(mode: str) -> Image.Image:
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    if mode == "I;16":
        return Image.fromarray((x * 65535 // SIDE).astype(np.uint16))
    rgb = Image.fromarray(np.stack([x * 255 // SIDE, y * 255 // SIDE, (x + y) % 256], -1).astype(np.uint8))
    if mode == "P+transparency":
        img = rgb.convert("P")
        img.info["transparency"] = 0
        return img
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["P", "1", "I;16", "P+transparency"])
def test_large_palette_one_bit_and_16_bit_images_are_reduced_not_rejected(tmp_path, mode):
    path = tmp_path / "big.png"
    gradient(mode).save(path, compress_level=1)
    full = decode_image(path, reduce_above=10**12)  # decoded whole: the reference
    reduced = decode_image(path, reduce_above=1_000_000)  # what a large image gets
    assert tuple(reduced.pixels.shape) == (SIDE // 2, SIDE // 2, 3)
    assert any("reduced from" in n for n in reduced.notes)
    assert abs(full.pixels.float().mean() - reduced.pixels.float().mean()) < 2.0  # the same picture


def test_max_pixels_governs_pillows_own_bomb_limit(tmp_path, monkeypatch, tiny_clip_dir, score_head_path, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400_000)  # Pillow refuses over 800,000 pixels
    path = tmp_path / "large.png"
    Image.fromarray(illustration(1000, 900)).save(path)  # 900,000 pixels
    with pytest.raises(ImageError, match="over the limit of 850,000"):
        decode_image(path, max_pixels=850_000)
    assert decode_image(path, max_pixels=1_000_000).size == (1000, 900)
    assert main(["score", str(path), "-m", str(score_head_path), "--clip", str(tiny_clip_dir), "--max-pixels",
                 "1000000", "--no-progress"]) == 0


class _Store:
    def file(self, path):
        return None

    def reader(self):
        return self

    def close(self):
        pass


def test_a_huge_file_that_is_not_an_image_is_refused_without_reading_it(tmp_path, encoder):
    from cityclf_core import CropPolicy
    from cityclf_core.scoring.embedding import ClipPass

    big = tmp_path / "huge.png"
    with open(big, "wb") as f:  # 256 MiB of nothing (sparse: costs no disk)
        f.write(b"not an image at all")
        f.truncate(256 << 20)
    reader = FileReader(_Store(), [ClipPass(encoder, CropPolicy(tiling=False))], Known([set()]))
    tracemalloc.start()
    try:
        item = reader.read(0, str(big))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert item.error and "not an image" in item.error
    assert peak < 8 << 20  # not the file's 256 MiB


def test_a_large_image_is_hashed_in_a_stream_and_decoded_from_the_file(tmp_path, encoder, monkeypatch):
    from cityclf_core import CropPolicy
    from cityclf_core.scoring.embedding import ClipPass

    monkeypatch.setattr(reader_module, "READ_WHOLE_BELOW", 1024)  # every file counts as large
    path = tmp_path / "im.png"
    Image.fromarray(illustration(300, 200)).save(path)
    reader = FileReader(_Store(), [ClipPass(encoder, CropPolicy(tiling=False))], Known([set()]))
    item = reader.read(0, str(path))
    assert item.error is None and item.content == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (item.width, item.height) == (300, 200) and item.views[0].shape[0] == 1
