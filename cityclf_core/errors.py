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
    """Ctrl-C, caught where the work knows what to do next: `hint` is that one instruction."""

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
