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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .confined import NONBLOCK, Area, Folder, Outside, default_mode, fit_name, resolved
from .errors import CityClfError, ImageError

BOM = "\ufeff"
TEMP_SUFFIX = ".cityclf-tmp"
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class SidecarError(CityClfError):
    """A sidecar that is left untouched (not UTF-8, not a regular file, a link out of bounds)."""


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """`dir/name.png` -> `dir/name.txt`, the caption file the usual trainers read (a name that would pass
    NAME_MAX is shortened with a hash, the same way every time)."""
    image_path = Path(image_path)
    return image_path.with_name(fit_name(image_path.stem + ".txt"))


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


def _kind(mode: int) -> str | None:
    """None for a regular file, else what it is, in words."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def confined_target(path: Path, area: Area) -> tuple[Folder, str]:
    """The folder (open, confined) and name of the file to read and replace: `path`, or the file its symlink
    points at (if that lies in the area)."""
    try:
        folder = area.folder(path.parent, what=str(path))
        st = folder.lstat(path.name)
        if st is None or not stat.S_ISLNK(st.st_mode):
            return folder, path.name
        folder.close()
        target = resolved(path.parent / path.name)
        if not area.allows(target):
            raise SidecarError(f"{path} is a link to {target}, outside the allowed folders; left untouched "
                               "(replace the link by a file, or allow that folder)")
        return area.folder(os.path.dirname(target), what=str(path)), os.path.basename(target)
    except Outside as e:
        raise SidecarError(f"{path} is outside the allowed folders; left untouched ({e})") from None


def read_regular(folder: Folder, name: str, what: str = "a caption file") -> tuple[bytes, os.stat_result] | None:
    """(bytes, stat) of the existing regular file `name` in `folder`, None when there is none.

    Never blocks (a FIFO is opened non-blocking and refused by its type) and never follows a link.
    """
    path = folder.join(name)
    try:
        fd = folder.open(name, os.O_RDONLY | NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SidecarError(f"{path} is a symlink (it changed while it was being read); left untouched") \
                from None
        if e.errno in (errno.EISDIR, errno.ENXIO):
            raise SidecarError(f"{path} is not a regular file; left untouched") from None
        raise SidecarError(f"{path} cannot be read ({e.strerror}); left untouched") from None
    try:
        st = os.fstat(fd)
        kind = _kind(st.st_mode)
        if kind:
            raise SidecarError(f"{path} is {kind}, not {what}; left untouched")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks), st


def read_sidecar(folder: Folder, name: str) -> tuple[str, int | None]:
    """(text, mode) of an existing regular UTF-8 file `name` in `folder`, ("", None) when there is none."""
    found = read_regular(folder, name)
    if found is None:
        return "", None
    data, st = found
    try:
        return data.decode("utf-8"), stat.S_IMODE(st.st_mode)
    except UnicodeDecodeError as e:
        raise SidecarError(f"{folder.join(name)} is not UTF-8 text (byte {e.start}); its tags were not updated") \
            from None


def write_sidecar(image_path: str | os.PathLike, tags: list[str], owned: Callable[[str], bool],
                  allowed_roots: Sequence[str | os.PathLike] | None = None,
                  area: Area | None = None) -> tuple[Path, bool]:
    """Update `<image stem>.txt`; returns (path, changed).

    Every file is used through a folder descriptor walked from an allowed root (confined.py): `area`, else
    `allowed_roots`, else the image's own folder. A symlinked sidecar is written through to its target when
    that lies in the area. The old temporaries of a killed run in that folder are removed first. Raises
    SidecarError, leaving the file untouched, for sidecars that are not UTF-8, not regular files, or out of
    the area.
    """
    image_path = Path(image_path)
    if not image_path.is_file():
        raise ImageError(f"{image_path}: no such image file; sidecars are written only next to existing images")
    path = sidecar_path(image_path)
    if area is None:
        with Area(allowed_roots if allowed_roots is not None else [image_path.parent]) as area:
            return write_sidecar(image_path, tags, owned, area=area)
    folder, name = confined_target(path, area)
    with folder:
        area.sweep_once(folder, TEMP_SUFFIX)
        existing, mode = read_sidecar(folder, name)
        new = merge_caption(existing, tags, owned)
        if new == existing:
            return path, False
        folder.write_atomic(name, new.encode("utf-8"), mode if mode is not None else default_mode(), TEMP_SUFFIX)
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
    with Area(allowed_roots if allowed_roots is not None else {p.parent for p, _ in items}) as area:
        for p, tags in items:
            try:
                path, changed = write_sidecar(p, tags, owned, area=area)
            except SidecarError as e:
                report.skipped.append((sidecar_path(p), str(e)))
                continue
            (report.updated if changed else report.unchanged).append(path)
    return report


__all__ = ["SidecarError", "SidecarReport", "TEMP_SUFFIX", "confined_target", "merge_caption", "newline_of",
           "read_regular", "read_sidecar", "sidecar_path", "update_sidecars", "write_sidecar"]
