"""The refinement loop: which images does a head get most confidently wrong?

The released heads were grown by scoring new images, hand-checking the false
positives and negatives, moving them to the right folder and retraining. This
lists those candidates, highest loss first.
"""

from __future__ import annotations

import os

from .kinds.base import ReviewItem
from .scoring.heads import Head
from .scoring.results import HeadResult
from .train.data import scan_folders


def expected_from_folders(root: str | os.PathLike, head: Head) -> dict[str, str | float]:
    """{image path: what it should be (a class name, a normalised score ...)} from a labelled data folder."""
    examples, _ = scan_folders(root, head.kind, "images")
    return {os.path.abspath(e.source): head.kind.expected_value(e.target, head, str(root)) for e in examples}


def review_items(rows: list[tuple[str, HeadResult]], expected: dict, head: Head) -> list[ReviewItem]:
    """The images the head gets wrong (its kind decides what wrong is), highest loss first."""
    items = []
    for path, r in rows:
        want = expected.get(os.path.abspath(path))
        if want is None:
            continue
        item = head.kind.review(path, r, want, head)
        if item is not None:
            items.append(item)
    return sorted(items, key=lambda it: it.loss, reverse=True)


__all__ = ["ReviewItem", "expected_from_folders", "review_items"]


