"""Caption sidecars (`image.txt` beside `image.png`): read, merge our tags in, write back safely.

Updates never clobber: tags the rules own are replaced, every other byte of the
caption is kept (its words, spacing, line endings and byte-order mark), and a
rerun with the same tags leaves the file untouched. Writes are atomic: a
temporary file under an unpredictable name, created exclusively in the same
folder, fsynced, then renamed over the caption.

Odd sidecars are skipped with a reason instead of stopping a run: one that is
not UTF-8, a directory, a FIFO or another non-regular file, or a symlink whose
target lies outside the folders a caller allows.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import CityClfError, ImageError
from .filemode import umask_mode

BOM = "\ufeff"
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class SidecarError(CityClfError):
    """A sidecar that is left untouched (not UTF-8, not a regular file, a link out of bounds)."""


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """`dir/name.png` -> `dir/name.txt`, the caption file the usual trainers read."""
    return Path(image_path).with_suffix(".txt")


def newline_of(text: str) -> str:
    """The line ending a text already uses: CRLF, CR or LF (LF for text without any)."""
    if "\r\n" in text:
        return "\r\n"
    if "\r" in text:
        return "\r"
    return "\n"


def merge_caption(existing: str, tags: list[str], owned: Callable[[str], bool]) -> str:
    """`existing` with tags we own (owned(tag) True) replaced by `tags`; all other text kept.

    Comma-separated tokens are compared after stripping spaces; tokens we do not own
    keep their exact spelling, order and spacing, and the file keeps its line endings.
    """
    bom = BOM if existing.startswith(BOM) else ""
    content = existing[len(bom):]
    body = content.rstrip("\r\n")
    trailing = content[len(body):]
    tokens = body.split(",") if body.strip() else []
    kept = [t for t in tokens if not owned(t.strip())]
    present = {t.strip() for t in kept}
    missing = [t for t in tags if t not in present]
    if [t.strip() for t in tokens] == [t.strip() for t in kept] and not missing:
        return existing  # nothing to change: byte-identical
    text = ",".join(kept).rstrip()
    if missing:
        text = (text + ", " if text.strip() else "") + ", ".join(missing)
    return bom + text + (trailing or newline_of(existing))


def inside(path: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> bool:
    """Whether `path`, with every symlink resolved, lies in one of `roots` (also resolved)."""
    real = os.path.realpath(path)
    for root in roots:
        r = os.path.realpath(root)
        if real == r or real.startswith(r.rstrip(os.sep) + os.sep):
            return True
    return False


def _kind(mode: int) -> str | None:
    """None for a regular file, else what it is, in words."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _target(path: Path, allowed_roots: Sequence[str | os.PathLike] | None) -> Path:
    """The file to read and replace: `path`, or the file its symlink points at (if allowed)."""
    if not path.is_symlink():
        if allowed_roots is not None and not inside(path.parent, allowed_roots):
            raise SidecarError(f"{path} is outside the allowed folders; left untouched")
        return path
    target = Path(os.path.realpath(path))
    if allowed_roots is not None and not inside(target, allowed_roots):
        raise SidecarError(f"{path} is a link to {target}, outside the allowed folders; left untouched "
                           "(replace the link by a file, or allow that folder)")
    return target


def read_sidecar(path: Path) -> tuple[str, int | None]:
    """(text, mode) of an existing regular UTF-8 file, ("", None) when there is none.

    Never blocks: a FIFO is opened non-blocking and refused by its type.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return "", None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SidecarError(f"{path} is a symlink loop; left untouched") from None
        if e.errno in (errno.EISDIR, errno.ENXIO):
            raise SidecarError(f"{path} is not a regular file; left untouched") from None
        raise SidecarError(f"{path} cannot be read ({e.strerror}); left untouched") from None
    try:
        st = os.fstat(fd)
        what = _kind(st.st_mode)
        if what:
            raise SidecarError(f"{path} is {what}, not a caption file; left untouched")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8"), stat.S_IMODE(st.st_mode)
    except UnicodeDecodeError as e:
        raise SidecarError(f"{path} is not UTF-8 text (byte {e.start}); its tags were not updated") from None


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` via a temporary file made exclusively (O_EXCL) under a random name
    in the same folder, fsynced and renamed over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".cityclf-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode if mode is not None else umask_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_sidecar(image_path: str | os.PathLike, tags: list[str], owned: Callable[[str], bool],
                  allowed_roots: Sequence[str | os.PathLike] | None = None) -> tuple[Path, bool]:
    """Update `<image stem>.txt`; returns (path, changed).

    A symlinked sidecar is written through to its target (which must lie in
    `allowed_roots` when they are given). Raises SidecarError, leaving the file
    untouched, for sidecars that are not UTF-8 or not regular files.
    """
    image_path = Path(image_path)
    if not image_path.is_file():
        raise ImageError(f"{image_path}: no such image file; sidecars are written only next to existing images")
    path = sidecar_path(image_path)
    target = _target(path, allowed_roots)
    existing, mode = read_sidecar(target)
    new = merge_caption(existing, tags, owned)
    if new == existing:
        return path, False
    atomic_write(target, new.encode("utf-8"), mode)
    return path, True


@dataclass
class SidecarReport:
    """What `update_sidecars` did: files changed, files already up to date, and (path, why) skipped."""

    updated: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"sidecars: {len(self.updated)} updated, {len(self.unchanged)} already up to date"
        return text + (f", {len(self.skipped)} skipped" if self.skipped else "")


def update_sidecars(items: Iterable[tuple[str | os.PathLike, list[str]]], owned: Callable[[str], bool],
                    allowed_roots: Sequence[str | os.PathLike] | None = None) -> SidecarReport:
    """Update the sidecar of each (image path, tags); a sidecar that cannot be updated is skipped
    and reported, and the others are still written. Every image must exist (checked first)."""
    items = [(Path(p), t) for p, t in items]
    for p, _ in items:
        if not p.is_file():
            raise ImageError(f"{p}: no such image file; sidecars are written only next to existing images")
    report = SidecarReport()
    for p, tags in items:
        try:
            path, changed = write_sidecar(p, tags, owned, allowed_roots)
        except SidecarError as e:
            report.skipped.append((sidecar_path(p), str(e)))
            continue
        (report.updated if changed else report.unchanged).append(path)
    return report


__all__ = ["SidecarError", "SidecarReport", "atomic_write", "inside", "merge_caption", "newline_of",
           "read_sidecar", "sidecar_path", "update_sidecars", "write_sidecar"]
