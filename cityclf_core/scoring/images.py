"""Image files in, [H, W, 3] uint8 tensors out -- or a clear reason why not.

Decoding follows what the reference CLIP processor sees: EXIF orientation
applied, transparency composited onto white, 16-bit images scaled (not clipped)
to 8 bits, CMYK and palette images converted, the first frame of animations.
Corrupt, truncated and non-image files, unreadable files and decompression
bombs raise :class:`ImageError` naming the file; dataset jobs report and skip.

Very large images are reduced while decoding (JPEG DCT scaling, else an integer
box reduction) to no less than 1536 px on the short side -- the most any crop
policy uses -- so a 100-megapixel scan does not need gigabytes of memory.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import CityClfError, ImageError
from .crops import MAX_SIDE
from ..defaults import DEFAULT_MAX_PIXELS

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".jxl"}
)
#: Images above this many pixels are reduced while decoding (short side kept >= MAX_SIDE).
REDUCE_ABOVE_PIXELS = 40_000_000


@dataclass
class DecodedImage:
    path: Path
    pixels: torch.Tensor  # [H, W, 3] uint8, EXIF-rotated
    size: tuple[int, int]  # (width, height) as stored in the file, before any reduction
    notes: list[str] = field(default_factory=list)


def _to_rgb_array(img, sixteen_bit: bool = False) -> tuple[np.ndarray, list[str]]:
    """Any Pillow mode -> HxWx3 uint8, with a note for conversions that lose something.

    `sixteen_bit`: the file was 16-bit (an "I" image made from "I;16" to be reduced): scaled like "I;16".
    """
    from PIL import Image

    notes: list[str] = []
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8), notes
    if mode.startswith("I;16") or mode == "I":
        arr = np.array(img).astype(np.float64)
        if mode == "I" and not sixteen_bit and arr.max(initial=0) <= 255:
            scaled = arr
        else:
            scaled = arr / 257.0  # 0..65535 -> 0..255
            notes.append("16-bit reduced to 8-bit")
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), notes
    if mode == "F":
        arr = np.array(img, dtype=np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), notes
    has_alpha = "A" in img.getbands() or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparency composited onto white")
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8), notes
    return np.array(img.convert("RGB"), dtype=np.uint8), notes


_PILLOW_LIMIT_LOCK = threading.Lock()


def _allow_pixels(max_pixels: int) -> None:
    """Let Pillow open images up to `max_pixels` (our own check below then governs).

    Pillow refuses images over twice its global `Image.MAX_IMAGE_PIXELS`
    whatever the caller asks; raising it only when asked for more keeps its
    guard as it is for everyone else in the process.
    """
    from PIL import Image

    with _PILLOW_LIMIT_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and max_pixels > 2 * limit:
            Image.MAX_IMAGE_PIXELS = max_pixels  # its error comes at twice this: ours comes first


def _reducible(img):
    """`img` in a mode Image.reduce accepts (palette, 1-bit and 16-bit images are not), converted losslessly."""
    if img.mode in ("P", "PA"):
        return img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode == "1":
        return img.convert("L")
    if img.mode.startswith("I;16"):
        return img.convert("I")
    return img


def decode_image(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduce_above: int = REDUCE_ABOVE_PIXELS,
    data: bytes | None = None,
    opener: Callable[[Path], BinaryIO] | None = None,
) -> DecodedImage:
    """Decode one image file (or its bytes, already read, as `data`; or the file `opener(path)` gives, such as
    a confined open); raise ImageError if it cannot be scored."""
    path = Path(path)
    if opener is None or data is not None:
        return _decode(path, io.BytesIO(data) if data is not None else path, max_pixels, reduce_above)
    try:
        source = opener(path)
    except CityClfError as e:
        raise ImageError(f"{path}: {e}") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read it ({e.strerror or e})") from None
    with source:
        return _decode(path, source, max_pixels, reduce_above)


def _decode(path: Path, source, max_pixels: int, reduce_above: int) -> DecodedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    notes: list[str] = []
    _allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: cannot read it (permission denied)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: too many pixels, refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image, or a format Pillow cannot read") from None
    except OSError as e:
        if e.errno is not None:  # the file system said no
            raise ImageError(f"{path}: cannot read it ({e.strerror or e})") from None
        raise ImageError(f"{path}: truncated or corrupt image file ({e})") from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageError(f"{path}: image of {width}x{height} pixels has nothing to score")
        if width * height > max_pixels:
            raise ImageError(
                f"{path}: {width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,} "
                "(decompression-bomb protection); raise the limit if the file is trusted"
            )
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            img.seek(0)
            notes.append(f"animated: first of {frames} frames scored")
        try:
            factor = max(1, min(width, height) // MAX_SIDE) if width * height > reduce_above else 1
            if factor > 1 and img.format == "JPEG":
                img.draft("RGB", (width // factor, height // factor))  # DCT scaling: decodes less
            img.load()
            source_mode = img.mode
            remaining = min(img.size) // MAX_SIDE if factor > 1 else 1
            if remaining > 1:
                img = _reducible(img).reduce(remaining)
            if img.size != (width, height):
                notes.append(f"reduced from {width}x{height} to {img.size[0]}x{img.size[1]} while decoding")
            orientation = _orientation(img)
            if orientation not in (None, 1):
                img = ImageOps.exif_transpose(img)
                notes.append(f"EXIF orientation {orientation} applied")
            arr, more = _to_rgb_array(img, sixteen_bit=source_mode.startswith("I;16"))
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"{path}: truncated or corrupt image data ({e})") from None
    notes.extend(more)
    return DecodedImage(path=path, pixels=torch.from_numpy(arr), size=(width, height), notes=notes)


def _orientation(img) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # malformed EXIF: treated as no orientation
        return None


def reason_for(path: str | os.PathLike, message: str) -> str:
    """An ImageError's message without its leading path: for reports that name the path themselves."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _unusable(path: Path) -> str | None:
    """Why a path from a walk cannot be read as a file (a symlink loop, a dangling link, ...), or None."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop (it never reaches a file)"
        if os.path.islink(path) and e.errno == errno.ENOENT:
            return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
        return f"cannot read it ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def walk_images(folder, recursive: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files in `folder` (an open confined.Folder), sorted as find_images sorts them, and
    [(path, why)] for the entries left out. Everything goes through descriptors: the folder is listed
    through its own, each subfolder is opened relative to its parent's without following a link, so a
    folder swapped for a link meanwhile is left out (with a reason), never listed. Hidden names are
    skipped; a file reached twice (a link to a file listed already) is listed once."""
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
    seen: set[tuple[int, int]] = set()

    def walk(here) -> None:
        subfolders = []
        for name in sorted(here.names()):
            if name.startswith("."):
                continue
            st = here.lstat(name)
            if st is None:  # gone since it was listed
                continue
            if stat.S_ISDIR(st.st_mode):
                subfolders.append(name)
                continue
            if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(here.join(name))
            if stat.S_ISLNK(st.st_mode):
                why, st = _link_target(here, name)
            else:
                why = None if stat.S_ISREG(st.st_mode) else "not a regular file"
            if why:
                problems.append((path, why))
            elif (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                found.append(path)
        for name in subfolders if recursive else ():
            try:
                with here.child(name) as sub:
                    walk(sub)
            except CityClfError as e:  # confined.Outside: swapped for a link or a file meanwhile
                problems.append((Path(here.join(name)), f"not listed: {e}"))
            except OSError as e:
                problems.append((Path(here.join(name)), f"cannot list it ({e.strerror or e})"))

    walk(folder)
    return found, problems


def _link_target(folder, name: str) -> tuple[str | None, os.stat_result | None]:
    """(why the link `name` in `folder` cannot be read as a file, or None; the file it leads to)."""
    try:
        st = os.stat(name, dir_fd=folder.fd) if folder.fd is not None else os.stat(folder.join(name))
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop (it never reaches a file)", None
        if e.errno == errno.ENOENT:
            try:
                return f"a symbolic link to {folder.readlink(name)!r}, which does not exist", None
            except OSError:
                return "gone while it was being listed", None
        return f"cannot read it ({e.strerror or e})", None
    return (None if stat.S_ISREG(st.st_mode) else "not a regular file"), st


def find_images(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders (recursively, sorted) into image files.

    Returns (images, problems). A file named explicitly is kept whatever its
    extension (decoding will say if it is not an image); in folders only known
    image extensions are taken and hidden folders are skipped. A symbolic link
    that loops or leads nowhere is a problem for that path, never for the run.
    """
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            items = []
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                items.extend(
                    Path(root) / f for f in sorted(files)
                    if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith(".")
                )
            if not items:
                problems.append((p, "no image files in this folder"))
        elif os.path.lexists(p):
            items = [p]
        else:
            problems.append((p, "no such file or folder"))
            continue
        for item in items:
            why = _unusable(item)
            if why:
                problems.append((item, why))
                continue
            key = os.path.realpath(item)
            if key not in seen:
                seen.add(key)
                found.append(item)
    return found, problems


def ordered_map(fn: Callable, items: Iterable, workers: int = 2, prefetch: int = 8) -> Iterator:
    """fn(item) for each item, computed in `workers` threads, yielded in input order.

    At most `prefetch` results wait ahead of the consumer; stopping early (an
    exception, Ctrl-C, closing the generator) cancels what has not started.
    """
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cityclf-worker")
    try:
        futures: deque = deque()
        it = iter(items)
        for item in it:
            futures.append(pool.submit(fn, item))
            if len(futures) >= max(1, prefetch):
                break
        while futures:
            result = futures.popleft().result()
            nxt = next(it, _END)
            if nxt is not _END:
                futures.append(pool.submit(fn, nxt))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def iter_decoded(
    paths: list[Path], workers: int = 2, prefetch: int = 8, **decode_kw
) -> Iterator[tuple[Path, DecodedImage | None, str | None]]:
    """Decode files in background threads, yielding (path, image or None, error or None) in order.

    Pillow releases the GIL while decoding, so threads overlap decoding with the
    model; at most `prefetch` decoded images wait at a time.
    """

    def job(p: Path):
        try:
            return p, decode_image(p, **decode_kw), None
        except ImageError as e:
            return p, None, str(e)
        except MemoryError:
            return p, None, f"{p}: not enough memory to decode it"

    return ordered_map(job, paths, workers, prefetch)


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "DecodedImage",
    "decode_image",
    "find_images",
    "iter_decoded",
    "ordered_map",
    "reason_for",
    "walk_images",
]
