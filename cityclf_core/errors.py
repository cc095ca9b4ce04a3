"""User-facing errors.

Every error a user can cause (a bad file, a wrong option, a missing model) is a
:class:`CityClfError` whose message names the input and says what to do. The CLI
prints these without a traceback; the ComfyUI nodes let them reach the UI as the
node's error text. Anything else escaping is a bug in this package.
"""

from __future__ import annotations


class CityClfError(Exception):
    """Base class: a problem with the user's input, files or options."""


class WeightsError(CityClfError):
    """A head or CLIP weight file that is missing, unreadable or not what it claims."""


class ImageError(CityClfError):
    """An image file or tensor that cannot be scored."""


class ConfigError(CityClfError):
    """A config file or option that is invalid or contradictory."""


class DownloadError(CityClfError):
    """A model that is not on disk and could not be downloaded."""


class StoreError(CityClfError):
    """An embedding store that cannot be used as asked."""



class Interrupted(KeyboardInterrupt):
    """Stopped by Ctrl-C (or SIGTERM) at a safe point; `hint`, its message, is the one instruction for what to do
    next (exit 130)."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint


class interrupted_hint:  # noqa: N801  (used as a context manager, like contextlib's)
    """Within it, Ctrl-C becomes Interrupted(hint)."""

    def __init__(self, hint: str):
        self.hint = hint

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind is not None and issubclass(kind, KeyboardInterrupt) and not isinstance(error, Interrupted):
            raise Interrupted(self.hint) from None
        return False



class FileSystemError(CityClfError):
    """A file or folder the system refused to write or read: a full disk, a read-only file system, no
    permission, a name too long. The message names the file and says what to do."""


#: what a user can do about each refusal of the system (errno name -> advice)
_ADVICE = {
    "ENOSPC": "the disk is full: free some space (or write somewhere else) and run the command again",
    "EDQUOT": "your disk quota is used up: free some space (or write somewhere else) and run the command again",
    "EROFS": "the file system is read-only: write somewhere writable",
    "EACCES": "permission denied: check the permissions of the file and its folder, or write somewhere else",
    "EPERM": "the system does not permit this here: check the permissions, or write somewhere else",
    "ENAMETOOLONG": "the name or the path is too long: use a shorter name or a folder nearer the root",
    "ENOENT": "no such file or folder: check the path (a folder to write into must exist, or be created first)",
    "ENOTDIR": "a part of the path is a file, not a folder: check the path",
    "EISDIR": "it is a folder: give a file name",
    "EIO": "the disk reported an input/output error: check the disk, then run the command again",
}


def file_system_error(e: OSError, doing: str = "") -> FileSystemError | None:
    """The user's error for an OSError the user can act on (disk full, read-only, permissions, long names,
    missing folders), naming the file; None for the others (a bug here). Our writers replace files only
    once complete, so what was there before is left as it was."""
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    advice = _ADVICE.get(name)
    if advice is None:
        return None
    where = " -> ".join(repr(str(f)) for f in (e.filename, e.filename2) if f is not None) or "a file"
    return FileSystemError(f"{where}: {doing + ' failed: ' if doing else ''}{e.strerror or name}; {advice}. "
                           "Files already there were left as they were.")
