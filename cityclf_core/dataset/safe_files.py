"""File operations that a kill at any moment cannot leave half-done under a real name.

    copy_into   copy to a temporary name in the destination folder, fsync, then link it into place
    move_into   a hard link then unlink on one file system; across file systems, copy_into then unlink
    same_file_content  whether two files hold the same bytes (size, then sha256 in a stream)

The destination is an open confined.Folder (walked from the destination root
without following links), so the temporary, the link and the rename all stay in
the folder that was checked. Nothing here overwrites an existing file: a file is
put in place with link(2), which fails when the name is taken. A copy that was
killed leaves at most a hidden temporary file (`.NAME.<16 hex>.cityclf-part`,
NAME shortened with a hash when the whole would pass NAME_MAX), never a
truncated file under the real name; the next run sweeps ours from each folder
it writes (confined.Area.sweep_once).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

from ..confined import Folder, naming

TEMP_SUFFIX = ".cityclf-part"
#: link(2) is not possible here: use a copy (moves) or a rename after checking the name is free (copies)
NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def fsync_folder(folder: Path) -> None:
    """Make a folder's new entries durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _place(folder: Folder, temp: str, name: str) -> None:
    """Give the finished `temp` the name `name` (both in `folder`), failing if that name is taken."""
    try:
        folder.link(temp, name)
    except OSError as e:
        if e.errno not in NO_LINK:
            raise
        if folder.lstat(name) is not None:  # no hard links on this file system: check, then rename
            raise FileExistsError(errno.EEXIST, "file exists", folder.join(name)) from None
        folder.rename(temp, name)
        return
    folder.unlink(temp)


def copy_into(source: Path, folder: Folder, name: str) -> None:
    """Copy `source` to `name` in `folder` (which must not exist) so that it is either absent or complete."""
    fd, temp = folder.temporary(name, TEMP_SUFFIX)
    try:
        with naming(folder.join(name)), open(source, "rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            st = os.fstat(fin.fileno())
            if folder.fd is not None:  # the times and mode, through the descriptor
                os.fchmod(fout.fileno(), stat.S_IMODE(st.st_mode))
                os.utime(fout.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(fout.fileno())
        if folder.fd is None:
            shutil.copystat(source, folder.join(temp))
        _place(folder, temp, name)
        folder.sync()
    finally:
        if folder.lstat(temp) is not None:
            folder.unlink(temp)


def move_into(source: Path, folder: Folder, name: str) -> None:
    """Move `source` to `name` in `folder` (which must not exist); a kill leaves it in one place or (as the
    same bytes) two."""
    try:
        folder.link(os.path.abspath(source), name)
        folder.sync()
    except OSError as e:
        if e.errno not in NO_LINK:
            raise
        copy_into(source, folder, name)
    os.unlink(source)
    fsync_folder(source.parent)


def same_file_content(a: Path, b: Path, b_folder: Folder | None = None) -> bool:
    """Whether `a` and `b` are regular files with the same bytes (the same file counts); `b` is a name in
    `b_folder` when that is given (opened there, never through a link)."""
    try:
        fa = open(a, "rb")
    except OSError:
        return False
    with fa:
        try:
            fd = b_folder.open(b.name, os.O_RDONLY | os.O_NONBLOCK) if b_folder is not None else \
                os.open(b, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as fb:
            sa, sb = os.fstat(fa.fileno()), os.fstat(fb.fileno())
            if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
                return True
            if sa.st_size != sb.st_size or not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)):
                return False
            return _hash(fa) == _hash(fb)


def _hash(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


__all__ = ["NO_LINK", "TEMP_SUFFIX", "copy_into", "fsync_folder", "move_into", "same_file_content"]
