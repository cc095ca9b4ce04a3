"""Where the nodes may read and write files: ComfyUI's input and output folders, and roots the
server's owner adds outside the prompt.

A prompt is data from whoever can reach the server, so paths in it are
confined: a path is resolved (relative ones against the input folder, then
every symlink) and must lie inside an allowed root. Extra roots come only from
the server's environment: CITYCLF_ALLOWED_ROOTS, folders separated by
os.pathsep (":" on Linux and macOS, ";" on Windows). Nothing in a prompt, and
no file a prompt could write (such as ComfyUI's user folder), can widen them.
"""

from __future__ import annotations

import os

from ..cityclf_core import ConfigError
from ..cityclf_core.confined import NAME_MAX, Area
from . import comfy_bridge as bridge

ROOTS_ENV = "CITYCLF_ALLOWED_ROOTS"


class PathRefused(ConfigError):
    """A path in a prompt that leads outside the allowed folders."""


def allowed_roots() -> list[str]:
    """ComfyUI's input and output folders, then the CITYCLF_ALLOWED_ROOTS folders; all resolved."""
    roots = [bridge.input_dir(), bridge.output_dir()]
    roots += [r for r in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if r.strip() and os.path.isabs(r.strip())]
    out: list[str] = []
    for r in roots:
        real = os.path.realpath(r.strip())
        if real not in out:
            out.append(real)
    return out


def refusal(path: str, what: str, roots: list[str]) -> PathRefused:
    return PathRefused(
        f"{what} {path!r} is outside the folders this node may use ({', '.join(roots)}). Put the files in "
        f"ComfyUI's input or output folder, or let the server's owner add their folder to {ROOTS_ENV} "
        f"(folders separated by {os.pathsep!r}) in the environment ComfyUI starts in."
    )


def confine(path: str, what: str, roots: list[str] | None = None) -> str:
    """`path` made absolute (relative ones are in ComfyUI's input folder), refused unless it lies in
    an allowed root once `..` and every symlink are resolved. The path is returned as given, not
    normalised (the system resolves it as the check did), so a sidecar goes beside a linked image,
    not beside its target. This is the early, clear refusal: the files themselves are opened only
    through confined.Area, walked from a root without following links, so a link swapped in after
    this check leads nowhere."""
    roots = allowed_roots() if roots is None else roots
    text = os.path.expanduser(str(path).strip())
    full = text if os.path.isabs(text) else os.path.join(bridge.input_dir(), text)
    odd = unusable(full)
    if odd:
        raise PathRefused(f"{what} {str(path)[:200]!r} {odd}; give the path of a file or folder inside "
                          "ComfyUI's input or output folder")
    if not Area(roots).allows(full):
        raise refusal(str(path), what, roots)
    return full


def unusable(path: str) -> str | None:
    """Why `path` can be no file's path (a NUL byte, a name or a path too long), or None."""
    if "\0" in path:
        return "contains a NUL byte"
    if any(len(os.fsencode(part)) > NAME_MAX for part in path.split(os.sep)):
        return f"has a name longer than {NAME_MAX} bytes"
    if len(os.fsencode(path)) >= 4096:
        return "is longer than the 4096 bytes a path may have"
    return None


def is_allowed(path: str | os.PathLike, roots: list[str]) -> bool:
    return Area(roots).allows(path)


__all__ = ["ROOTS_ENV", "PathRefused", "allowed_roots", "confine", "is_allowed"]
