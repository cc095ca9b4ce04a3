"""Scoring files in blocks, with one bad image never costing the others their scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..errors import ImageError
from ..scoring.images import DEFAULT_MAX_PIXELS, iter_decoded, reason_for
from ..scoring.pipeline import ScoringModel
from ..scoring.results import HeadResult
from .finite import OUTPUT, finite_results


@dataclass(frozen=True)
class ScoreOptions:
    """How images are cut and combined (the pipeline's options), and how files are read."""

    tiling: str = "auto"
    combine: str = "mean"
    upscale: bool = True
    batch_size: int | None = None
    workers: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS

    def pipeline(self) -> dict:
        return dict(tiling=self.tiling, combine=self.combine, upscale=self.upscale, batch_size=self.batch_size)


def score_files(
    model: ScoringModel,
    files: Iterable,
    options: ScoreOptions = ScoreOptions(),
    on_skip: Callable[[str, str], None] = lambda path, why: None,
    on_progress: Callable[[float], None] | None = None,
) -> Iterator[tuple[str, dict[str, HeadResult]]]:
    """(path, results) for each readable file, in order: decoding in threads, scoring in blocks.

    A file that can't be read or scored is passed to `on_skip(path, why)` and the
    rest go on. `on_progress(done)` counts files (fractions within a block).
    """
    block: list = []
    block_size = max(1, (options.batch_size or 8) // 2)
    opts = options.pipeline()
    done = 0.0

    def progress(value: float) -> None:
        if on_progress:
            on_progress(value)

    def flush():
        nonlocal done
        base = done
        pixels = [d.pixels for _, d in block]
        names = [str(p) for p, _ in block]
        try:
            results = model.score(pixels, names=names, **opts,
                                  on_progress=lambda d, t: progress(base + len(block) * d / max(t, 1)))
            pairs = list(zip(names, results))
        except ImageError:  # find the culprit, score the rest
            pairs = []
            for name, px in zip(names, pixels):
                try:
                    pairs.append((name, model.score([px], names=[name], **opts)[0]))
                except ImageError as e:
                    on_skip(name, str(e))
        done = base + len(block)
        progress(done)
        block.clear()
        kept = []
        for name, result in pairs:
            if finite_results(result):
                kept.append((name, result))
            else:
                on_skip(name, OUTPUT)
        return kept

    for path, decoded, error in iter_decoded(list(files), workers=options.workers, max_pixels=options.max_pixels):
        if error:
            on_skip(path, reason_for(path, error))
            done += 1
            progress(done)
            continue
        block.append((path, decoded))
        if len(block) >= block_size:
            yield from flush()
    if block:
        yield from flush()


__all__ = ["ScoreOptions", "score_files"]
