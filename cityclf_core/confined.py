"""One confined open: files under a root, reached through folder descriptors, so what is checked is what is used.

    Area(roots)             the folders a caller may use (each resolved once)
    Area.folder(path)       an open Folder: `path` resolved, checked to lie under a root, then walked from
                            the root's descriptor one component at a time with O_NOFOLLOW | O_DIRECTORY
    Folder.open/lstat/...   everything inside relative to that descriptor (O_NOFOLLOW on the last name)
    Folder.write_atomic     a temporary under a random name made exclusively in the folder, fsynced, renamed
    fit_name / temp_name    names derived from a file name, shortened with a hash to fit NAME_MAX

A folder swapped for a symbolic link between the check and the use makes the
walk fail (ELOOP/ENOTDIR) instead of leading outside: the caller gets
`Outside`, and nothing outside is read or written. Temporaries, renames and
links stay inside the one folder descriptor.

Where the system lacks O_NOFOLLOW or dir_fd (Windows), a path is checked after
resolving it and then opened by its resolved name: a link swapped in between
those two steps is not caught there (RELIABILITY.md says so).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import threading
from pathlib import Path
from typing import Iterable, Iterator

from .filemode import umask_mode as default_mode  # the mode open() gives a new file
from .errors import CityClfError

NAME_MAX = 255  # bytes in one file name on the usual file systems (ext4, xfs, btrfs, APFS, tmpfs)
HASH_CHARS = 8
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: descriptors relative to a folder: Linux, macOS and the BSDs; not Windows
HAVE_DIR_FD = bool(NOFOLLOW and DIRECTORY) and os.name == "posix"  # (by platform: a wrapped os.open is
# not in os.supports_dir_fd, and would silently switch the confinement off)
#: a walk component that is not the folder it was checked to be (swapped for a link or a file)
SWAPPED = {errno.ELOOP, errno.ENOTDIR, errno.EMLINK}


class Outside(CityClfError):
    """A path that leads outside the allowed folders (or was changed into a link while it was opened)."""


def inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def resolved(path: str | os.PathLike) -> str:
    """os.path.realpath, where a link that changes while it is being read (an error from readlink) is a
    refusal (Outside), not a crash."""
    try:
        return os.path.realpath(os.fspath(path))
    except OSError as e:
        raise Outside(f"{os.fspath(path)} changed while it was being resolved ({e.strerror}); left untouched") \
            from None


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """`name`, or, when its UTF-8 bytes pass `limit`, its stem cut at a character boundary plus `~` and a hash
    of the whole name, keeping the suffix: the same long name always gives the same short one."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    stem, suffix = os.path.splitext(name)
    tail = f"~{hashlib.sha256(raw).hexdigest()[:HASH_CHARS]}{suffix}"
    room = limit - len(os.fsencode(tail))
    if room < 1:  # an absurd suffix: hash everything
        return f"~{hashlib.sha256(raw).hexdigest()[:HASH_CHARS]}"
    cut = os.fsencode(stem)[:room]
    while cut and cut[-1] & 0xC0 == 0x80:  # not through a multibyte character: drop its continuation bytes,
        cut = cut[:-1]
    if cut and cut[-1] >= 0xC0:  # then its lead byte
        cut = cut[:-1]
    return os.fsdecode(cut) + tail


def temp_prefix(name: str) -> str:
    """The fixed start of the temporaries made for `name`: `.NAME.` (NAME shortened to leave room)."""
    return "." + fit_name(name, NAME_MAX - 2 - 16 - 20) + "."


def temp_name(name: str, suffix: str) -> str:
    """A fresh hidden temporary name for `name` in its folder: `.NAME.<16 hex><suffix>`, within NAME_MAX."""
    return f"{temp_prefix(name)}{secrets.token_hex(8)}{suffix}"


def temp_pattern(suffix: str) -> re.Pattern:
    """Temporaries with `suffix` this package makes (random part 16 hex, or 8 characters in older versions)."""
    return re.compile(r"\..+\.(?:[0-9a-f]{16}|[a-z0-9_]{8})" + re.escape(suffix) + r"\Z", re.S)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """An OSError raised inside without a file name (a write() on a full disk) gets `path`, so that the
    user's error names the file."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, os.fspath(path)) from e
        raise


class Folder:
    """An open folder under a root. Names passed to its methods are single components (no separators)."""

    def __init__(self, fd: int | None, path: str):
        self.fd, self.path = fd, path

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _at(self, name: str) -> dict:
        if os.sep in name or (os.altsep and os.altsep in name) or name in ("", ".", ".."):
            raise Outside(f"{name!r} is not a plain file name")
        return {"dir_fd": self.fd} if self.fd is not None else {}

    def _name(self, name: str) -> str:
        return name if self.fd is not None else self.join(name)

    def open(self, name: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        """A descriptor for `name` in this folder, never through a symbolic link."""
        return os.open(self._name(name), flags | NOFOLLOW | CLOEXEC, mode, **self._at(name))

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry itself (a link is not followed), or None when there is none."""
        try:
            return os.stat(self._name(name), follow_symlinks=False, **self._at(name))
        except FileNotFoundError:
            return None

    def readlink(self, name: str) -> str:
        return os.readlink(self._name(name), **self._at(name))

    def unlink(self, name: str) -> None:
        os.unlink(self._name(name), **self._at(name))

    def rename(self, src: str, dst: str) -> None:
        """Rename within this folder, replacing `dst`."""
        at = self._at(src) and {"src_dir_fd": self.fd, "dst_dir_fd": self.fd}
        self._at(dst)
        os.replace(self._name(src), self._name(dst), **at)

    def link(self, source: str, name: str) -> None:
        """Hard link `source` (an absolute path, or a name in this folder) as `name` here; fails when `name`
        exists."""
        at = {}
        if self.fd is not None:
            self._at(name)
            at["dst_dir_fd"] = self.fd
            if not os.path.isabs(source):
                self._at(source)
                at["src_dir_fd"] = self.fd
        os.link(source if self.fd is not None or os.path.isabs(source) else self.join(source), self._name(name), **at)

    def child(self, name: str, what: str = "") -> Folder:
        """The subfolder `name`, opened relative to this folder's descriptor without following a link: Outside
        when it is a link or not a folder (now: it may have been swapped since it was listed or checked)."""
        if self.fd is None:
            return Folder(None, self.join(name))
        try:
            fd = self.open(name, os.O_RDONLY | DIRECTORY)
        except OSError as e:
            if e.errno in SWAPPED:
                raise Outside(f"{what or self.join(name)}: {name!r} in it is a link or not a folder (it changed "
                              "while it was being opened); left untouched") from None
            raise
        return Folder(fd, self.join(name))

    def names(self) -> list[str]:
        """The names in this folder (listed through its descriptor where the system can)."""
        return os.listdir(self.fd if self.fd is not None else self.path)

    def sync(self) -> None:
        """Make this folder's new entries durable (a no-op where folders cannot be synced)."""
        try:
            if self.fd is not None:
                os.fsync(self.fd)
        except OSError:
            pass

    def temporary(self, name: str, suffix: str, mode: int = 0o600) -> tuple[int, str]:
        """(descriptor, name) of a new empty temporary for `name`, created exclusively (never through a link)."""
        for _ in range(100):
            tmp = temp_name(name, suffix)
            try:
                return self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), tmp
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name", self.join(name))

    def write_atomic(self, name: str, data: bytes, mode: int, suffix: str = ".cityclf-tmp",
                     times_ns: tuple[int, int] | None = None) -> None:
        """Replace `name` with `data`: written to a temporary in this folder, fsynced, renamed over it;
        `times_ns` (atime, mtime) are given to the new file before the rename."""
        fd, tmp = self.temporary(name, suffix)
        try:
            with naming(self.join(name)), os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), mode)
                if times_ns is not None:
                    os.utime(f.fileno(), ns=times_ns)
                os.fsync(f.fileno())
            self.rename(tmp, name)
        except BaseException:
            try:
                self.unlink(tmp)
            except OSError:
                pass
            raise
        self.sync()

    def sweep(self, suffix: str, name: str | None = None) -> int:
        """Remove the temporaries (regular files named as temp_name makes them) a killed run left here:
        those of `name`, or all with `suffix`. Never follows a link, never leaves this folder."""
        pattern = re.compile(re.escape(temp_prefix(name)) + r"[0-9a-f]{16}" + re.escape(suffix) + r"\Z") \
            if name is not None else temp_pattern(suffix)
        removed = 0
        for entry in self.names():
            if pattern.match(entry):
                st = self.lstat(entry)
                if st is not None and stat.S_ISREG(st.st_mode):
                    try:
                        self.unlink(entry)
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed


class Area:
    """The folders a caller may use: `roots`, each resolved once. A path is used only through `folder`."""

    def __init__(self, roots: Iterable[str | os.PathLike]):
        self.roots: list[str] = []
        for r in roots:
            real = resolved(r)
            if real not in self.roots:
                self.roots.append(real)
        self.swept: set[tuple[int, int, str]] = set()
        self._fds: dict[str, int] = {}  # each root opened once, at its first use: a later swap of it changes nothing
        self._lock = threading.Lock()

    def __enter__(self) -> Area:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _root_fd(self, root: str) -> int:
        """A new descriptor of `root` (opened once per Area, without following a link at its last name)."""
        with self._lock:
            fd = self._fds.get(root)
            if fd is None:
                fd = self._fds[root] = os.open(root, os.O_RDONLY | DIRECTORY | NOFOLLOW | CLOEXEC)
            return os.dup(fd)

    def root_of(self, real: str) -> str | None:
        """The longest root that `real` (a resolved path) lies under."""
        best = None
        for r in self.roots:
            if inside(real, r) and (best is None or len(r) > len(best)):
                best = r
        return best

    def allows(self, path: str | os.PathLike) -> bool:
        """Whether `path`, every link resolved, lies under a root (a first check; `folder` is what holds)."""
        return self.root_of(resolved(path)) is not None

    def folder(self, path: str | os.PathLike, create: bool = False, what: str = "") -> Folder:
        """The folder `path` (every link resolved), opened by a walk from its root that follows no link.

        `create` makes missing folders on the way (each inside the one before). Raises Outside when the
        folder is not under a root or a component is changed into a link meanwhile."""
        real = resolved(path)
        root = self.root_of(real)
        if root is None:
            raise Outside(f"{what or path} is outside the allowed folders ({', '.join(self.roots)})")
        if not HAVE_DIR_FD:
            if create:
                os.makedirs(real, exist_ok=True)
            return Folder(None, real)
        parts = [p for p in real[len(root):].split(os.sep) if p]
        try:
            folder = Folder(self._root_fd(root), root)
        except OSError as e:
            if e.errno in SWAPPED:
                raise Outside(f"{what or path}: the folder {root} is a link now (it changed meanwhile); "
                              "left untouched") from None
            raise
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o777, dir_fd=folder.fd)
                    except FileExistsError:
                        pass
                inner = folder.child(part, what=what or os.fspath(path))
                folder.close()
                folder = inner
        except BaseException:
            folder.close()
            raise
        return folder

    def open_file(self, path: str | os.PathLike, what: str = ""):
        """`path` (a link to a file in the area is followed once resolved) opened for reading as a binary
        file object, through a confined walk; Outside when it is not in the area."""
        real = resolved(path)
        with self.folder(os.path.dirname(real), what=what or os.fspath(path)) as folder:
            fd = folder.open(os.path.basename(real), os.O_RDONLY | NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "is a folder", os.fspath(path))
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")

    def sweep_once(self, folder: Folder, suffix: str) -> int:
        """Folder.sweep(suffix), once per folder and suffix in the life of this Area (a run)."""
        st = os.fstat(folder.fd) if folder.fd is not None else os.stat(folder.path)
        key = (st.st_dev, st.st_ino, suffix)
        if key in self.swept:
            return 0
        self.swept.add(key)
        return folder.sweep(suffix)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, suffix: str = ".cityclf-tmp") -> Iterator[Path]:
    """A temporary path beside `path` to write a new version of it to: fsynced and renamed over `path` when the
    block ends without error, removed otherwise, so `path` is the old file or the whole new one (a full disk
    leaves the old). The temporaries a killed run left for `path` are removed first."""
    path = Path(path)
    with Area([path.parent]) as area, area.folder(path.parent) as folder:
        folder.sweep(suffix, name=path.name)
        fd, tmp = folder.temporary(path.name, suffix, default_mode())
        os.close(fd)
        try:
            with naming(path):
                yield Path(folder.join(tmp))
            fd = folder.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            folder.rename(tmp, path.name)
        except BaseException:
            try:
                folder.unlink(tmp)
            except OSError:
                pass
            raise
        folder.sync()


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` as the new content of `path` (see `replacing`: the old file or the whole new one)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


__all__ = ["Area", "Folder", "HAVE_DIR_FD", "atomic_write", "NAME_MAX", "Outside", "default_mode", "fit_name", "inside", "replacing",
           "resolved", "temp_name", "temp_pattern", "temp_prefix"]
