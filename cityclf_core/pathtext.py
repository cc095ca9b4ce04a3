"""File names as text: printable and valid UTF-8 whatever bytes a name holds.

On Linux a file name is bytes; Python hands a name that is not UTF-8 to us with
its odd bytes as lone surrogates (`os.fsdecode`), which cannot be written as
UTF-8. `shown` writes those bytes as `\\xNN` (for terminals, CSV, JSON's
`path`); `raw_b64` gives the exact bytes, base64-encoded, for JSON readers that
must find the file again (only for such names: None for the rest).
"""

from __future__ import annotations

import base64
import os


def is_text(path: str | os.PathLike) -> bool:
    try:
        os.fspath(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def shown(path: str | os.PathLike) -> str:
    """The name with bytes that are not UTF-8 written as \\xNN: always valid UTF-8."""
    text = os.fspath(path)
    if is_text(text):
        return text
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def shown_here(path: str | os.PathLike) -> str:
    """`shown`, relative to the current folder when the path is inside it: a store keeps absolute paths, and
    this prints them as `cityclf score` prints the relative paths it was given."""
    text = os.fspath(path)
    if os.path.isabs(text):
        here = os.getcwd()
        if text.startswith(here.rstrip(os.sep) + os.sep):
            text = os.path.relpath(text, here)
    return shown(text)


def raw_b64(path: str | os.PathLike) -> str | None:
    """The name's exact bytes in base64 when it is not UTF-8, else None."""
    if is_text(path):
        return None
    return base64.b64encode(os.fsencode(path)).decode("ascii")


def safe_text(message: str) -> str:
    """A message that may quote such a name, made printable (its odd bytes as \\xNN)."""
    try:
        message.encode("utf-8")
        return message
    except UnicodeEncodeError:
        return message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


__all__ = ["is_text", "raw_b64", "safe_text", "shown"]
