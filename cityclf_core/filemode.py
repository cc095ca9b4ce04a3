"""Files are written with the user's umask (0644 by default), as a plain `open()` would: a ComfyUI server
running as another user can read the heads we train. Temporary files (mkstemp, safetensors' writer) are
created 0600, so what they become is given the umask's mode before it is moved into place. A leaf."""

from __future__ import annotations

import os


def umask_mode() -> int:
    """0o666 less the process's umask (the mode `open(path, "w")` gives a new file)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """safetensors' save_file, to a temporary name beside `path`, with the umask's mode, then renamed into place."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.chmod(tmp, umask_mode())
    os.replace(tmp, path)
