"""File operations that a kill at any moment cannot leave half-done under a real name.

    copy_file   copy to a temporary name in the destination folder, fsync, then link it into place
    move_file   a hard link then unlink on one file system; across file systems, copy_file then unlink
    same_file_content  whether two files hold the same bytes (size, then sha256 in a stream)

Nothing here overwrites an existing file: a file is put in place with link(2),
which fails when the name is taken. A copy that was killed leaves at most a
hidden temporary file (`.NAME.<16 hex>.cityclf-part`), never a truncated file
under the real name; `sweep_temporaries` removes ours on the next run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

TEMP_SUFFIX = ".cityclf-part"
#: link(2) is not possible here: use a copy (moves) or a rename after checking the name is free (copies)
NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


def sweep_temporaries(target: Path) -> int:
    """Remove the temporary files an interrupted copy to `target` left (only names this module makes)."""
    folder = target.parent
    if not folder.is_dir():
        return 0
    pattern = re.compile(re.escape(f".{target.name}.") + r"[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + "$")
    removed = 0
    for entry in os.scandir(folder):
        if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed += 1
    return removed


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


def _place(temp: Path, target: Path) -> None:
    """Give the finished `temp` the name `target`, failing if that name is taken."""
    try:
        os.link(temp, target)
    except OSError as e:
        if e.errno not in NO_LINK:
            raise
        if os.path.lexists(target):  # no hard links on this file system: check, then rename
            raise FileExistsError(errno.EEXIST, "file exists", str(target)) from None
        os.rename(temp, target)
        return
    os.unlink(temp)


def copy_file(source: Path, target: Path) -> None:
    """Copy `source` to `target` (which must not exist) so that `target` is either absent or complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_name(target)
    try:
        with open(source, "rb") as fin, open(temp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(source, temp)
        _place(temp, target)
        fsync_folder(target.parent)
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


def move_file(source: Path, target: Path) -> None:
    """Move `source` to `target` (which must not exist); a kill leaves it in one place or (as the same bytes) two."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        fsync_folder(target.parent)
    except OSError as e:
        if e.errno not in NO_LINK:
            raise
        copy_file(source, target)
    os.unlink(source)
    fsync_folder(source.parent)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def same_file_content(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are regular files with the same bytes (the same file counts)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if sa.st_size != sb.st_size or not (os.path.isfile(a) and os.path.isfile(b)):
        return False
    return file_hash(a) == file_hash(b)


__all__ = ["TEMP_SUFFIX", "copy_file", "file_hash", "fsync_folder", "move_file", "same_file_content",
           "sweep_temporaries", "temp_name"]
