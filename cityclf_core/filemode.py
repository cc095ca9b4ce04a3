"""Files are written with the user's umask (0644 by default), as a plain `open()` would: a ComfyUI server
running as another user can read the heads we train. Temporary files (mkstemp, safetensors' writer) are
created 0600, so what they become is given the umask's mode before it is moved into place. A leaf."""

from __future__ import annotations

import os
import re
from typing import Callable


def umask_mode() -> int:
    """0o666 less the process's umask (the mode `open(path, "w")` gives a new file)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None,
                     before_rename: Callable[[], None] | None = None) -> None:
    """safetensors' save_file, to a temporary name beside `path`, with the umask's mode, synced, then renamed
    into place: `path` is the old file or the whole new one. A failure (a full disk) removes the temporary and
    is an OSError naming `path` (safetensors reports the system's errors as its own, with the number in the
    text). `before_rename` runs once the temporary is synced."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except OSError:
            raise
        except Exception as e:  # safetensors' SafetensorError: "... (os error 28)"
            number = re.search(r"\(os error (\d+)\)", str(e))
            if number is None:
                raise
            code = int(number.group(1))
            raise OSError(code, os.strerror(code), path) from e
        os.chmod(tmp, umask_mode())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
