"""The refinement loop: which images does a head get most confidently wrong?

The released heads were grown by scoring new images, hand-checking the false
positives and negatives, moving them to the right folder and retraining. This
lists those candidates, highest loss first.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass


from .errors import ConfigError
from .heads import Head
from .pipeline import HeadResult


@dataclass
class ReviewItem:
    path: str
    expected: str
    predicted: str
    confidence: float  # probability of the predicted class (or the predicted score)
    p_expected: float  # probability of the expected class (or the expected score)
    loss: float  # -log p(expected) for classes, |score - expected| for scores
    kind: str  # false positive / false negative / confused / off by

    def to_dict(self) -> dict:
        return asdict(self)


def expected_from_folders(root: str | os.PathLike, head: Head) -> dict[str, str | float]:
    """{image path: expected class name (or normalised score)} from a labelled data folder."""
    from .train import scan_folders

    examples, _ = scan_folders(root, head.arch, "images")
    if head.arch == "class":
        labels = head.labels
        bad = sorted({int(e.target) for e in examples if int(e.target) >= len(labels)})
        if bad:
            raise ConfigError(f"{root} has class folder(s) {bad}, but head {head.name} has only {len(labels)} classes")
        return {os.path.abspath(e.source): labels[int(e.target)] for e in examples}
    return {os.path.abspath(e.source): float(e.target) for e in examples}


def review_items(rows: list[tuple[str, HeadResult]], expected: dict, head: Head) -> list[ReviewItem]:
    """The wrong ones (every one, for score heads), highest loss first."""
    items = []
    for path, r in rows:
        want = expected.get(os.path.abspath(path))
        if want is None:
            continue
        if head.arch == "class":
            name = _class_name(head, str(want))
            p = r.value_of(name)
            if r.label == name:
                continue
            pass_name = head.labels[0]
            kind = ("false positive" if name == pass_name else
                    "false negative" if r.label == pass_name else "confused")
            items.append(ReviewItem(path, name, r.label, max(r.values), p, -math.log(max(p, 1e-7)), kind))
        else:
            target = float(want)
            items.append(ReviewItem(path, f"{target:.3f}", f"{r.score:.3f}", r.score, target,
                                    abs(r.score - target), "off by"))
    return sorted(items, key=lambda it: it.loss, reverse=True)


def _class_name(head: Head, text: str) -> str:
    if text in head.labels:
        return text
    if text.isdigit() and int(text) < len(head.labels):
        return head.labels[int(text)]
    lowered = {label.lower(): label for label in head.labels}
    if text.lower() in lowered:
        return lowered[text.lower()]
    raise ConfigError(f"head {head.name} has no class {text!r}; its classes are {', '.join(head.labels)}")


__all__ = ["ReviewItem", "expected_from_folders", "review_items"]


