"""Packages whose public names are imported on first use: `import cityclf_core` (and a command that only parses
its options, or only takes a store's lock) then costs milliseconds, and torch, transformers and the SQLite
backend load only when something needs them. A leaf.

    __getattr__, __dir__ = lazy_exports(__name__, {"ScoringModel": "scoring.pipeline", ...})
"""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """The module-level `__getattr__` and `__dir__` of `package`: each name in `exports` comes from the module
    named beside it (relative to `package`) when first asked for, and is then kept in the package."""
    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted([*vars(sys.modules[package]), *exports])

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
