"""Numbers from users, checked once: thresholds, counts and sizes for every command, node and config.

A rule says what a number may be (whole or real, its bounds); `rule.check(value, name)` returns the number
or raises ConfigError naming `name` (an option such as --tile-size, a node input, a config key), and
a rule is itself an argparse `type=`, so a bad option is refused at parse time (exit 2,
with the option's name). NaN and infinities are never a number here; neither is a boolean.

    COUNT       a whole number >= 1          --top, --workers, --batch-size, --thumb, data.workers ...
    PIXELS      a whole number of pixels >= 1   --max-pixels, --tile-size (the CLIP input size is checked
                                                when the CLIP is known: `check_tile_size`)
    THRESHOLD   a finite real number          --min/--max values, tag thresholds, the Gate node
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

from .errors import ConfigError

#: the largest count anything here takes (steps, pixels, files): more is a typo, not a plan
LARGEST = 10**12


@dataclass(frozen=True)
class Rule:
    whole: bool  # an integer (a float that is integral is taken: YAML 1000.0)
    minimum: float | None = None
    maximum: float | None = LARGEST
    above: bool = False  # the minimum itself is excluded (lr > 0)

    def describe(self) -> str:
        what = "a whole number" if self.whole else "a number"
        if self.minimum is not None:
            what += f" {'above' if self.above else 'of at least'} {self.minimum:g}"
        if self.maximum is not None and self.maximum != LARGEST:
            what += f" and at most {self.maximum:g}"
        return what

    def problem(self, value) -> tuple[object, str | None]:
        """(the number, None) or (None, why it is not one)."""
        if isinstance(value, bool) or value is None:
            return None, f"must be {self.describe()}"
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if self.whole and text.lstrip("+-").isdigit() else float(text)
            except ValueError:
                return None, f"must be {self.describe()}"
        if not isinstance(value, (int, float)):
            return None, f"must be {self.describe()}"
        if isinstance(value, float):
            if not math.isfinite(value):
                return None, f"must be {self.describe()}"
            if self.whole:
                if not value.is_integer():
                    return None, f"must be {self.describe()}"
                value = int(value)
        if self.minimum is not None and (value <= self.minimum if self.above else value < self.minimum):
            return None, f"must be {'above' if self.above else 'at least'} {self.minimum:g}"
        if self.maximum is not None and value > self.maximum:
            return None, f"must be at most {self.maximum:g}"
        return value, None

    def check(self, value, name: str):
        """`value` as a number, or ConfigError naming `name`."""
        number, why = self.problem(value)
        if why:
            raise ConfigError(f"{name} {value!r}: {why}")
        return number

    def __call__(self, text: str):
        """The same check as an argparse `type=` (argparse adds the option's name; exit 2)."""
        number, why = self.problem(text)
        if why:
            raise argparse.ArgumentTypeError(f"{text!r}: {why}")
        return number


def whole(minimum: int | None = 1, maximum: int | None = LARGEST) -> Rule:
    return Rule(True, minimum, maximum)


def real(minimum: float | None = None, maximum: float | None = None, above: bool = False) -> Rule:
    return Rule(False, minimum, maximum, above)


COUNT = whole(1)
COUNT_OR_ZERO = whole(0)  # a node's "0 = all / automatic"
PIXELS = whole(1)
THRESHOLD = real()
FRACTION = real(0.0, 1.0)


def check_tile_size(tile_size: int | None, clip_size: int, name: str = "--tile-size") -> None:
    """A tile smaller than the CLIP's input would be enlarged into it: refused, naming the option."""
    if tile_size is None:
        return
    PIXELS.check(tile_size, name)
    if tile_size < clip_size:
        raise ConfigError(f"{name} {tile_size}: below this CLIP's input size ({clip_size} px); give at least "
                          f"{clip_size}, or leave it out for 2x the input size ({2 * clip_size} px)")


def with_tile_size(policy, tile_size: int | None, clip_size: int):
    """A crop policy with the user's --tile-size, for every head: one that tiles by default and one that tiles
    only when tiling is forced alike (a tile below the CLIP's input size is refused, naming the option)."""
    if tile_size is None:
        return policy
    check_tile_size(tile_size, clip_size)
    return dataclasses.replace(policy, tile_size=tile_size)


def check_flag(value, name: str) -> bool:
    """A yes/no setting: true or false only (a config's `cosine: maybe` is not a yes)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} {value!r}: expected true or false")
    return value


__all__ = ["COUNT", "COUNT_OR_ZERO", "FRACTION", "LARGEST", "PIXELS", "THRESHOLD", "Rule", "check_flag",
           "check_tile_size", "real", "whole", "with_tile_size"]
