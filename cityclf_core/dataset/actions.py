"""What happens to selected images: copied or moved (the store following a move), caption tags written."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from ..confined import Area
from ..errors import ImageError
from ..scoring.results import HeadResult
from ..sidecars import SidecarError, write_sidecar
from ..tags import TagRules, owner
from .journal import MoveJournal
from .transfer import Transfer, copy_or_move, inside

Rows = list[tuple[str, dict[str, HeadResult]]]


@dataclass(frozen=True)
class TransferRequest:
    to: str
    move: bool = False
    on_conflict: str = "rename"
    dry_run: bool = False

    @property
    def verb(self) -> str:
        return "move" if self.move else "copy"


def common_root(paths: Sequence[str], to: str | None = None) -> list[str]:
    """The common folder of `paths`, leaving out those already inside `to` (so `to` never nests in itself)."""
    outside = [p for p in paths if to is None or not inside(p, to)]
    if not outside:
        return []
    return [os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in outside])]


def transfer(chosen: Rows, scored: Rows, roots: Sequence[str] | None, request: TransferRequest,
             store=None) -> list[Transfer]:
    """Copy or move the chosen images; a store's rows follow moved files.

    Folders are kept relative to the inputs given, else to the common folder of
    everything scored outside the destination (not of the selection, which
    would make the layout depend on what was selected). A move with a store is
    journaled in it (journal.py): a killed move is completed by the next run.
    """
    to = os.path.abspath(request.to)
    return copy_or_move([p for p, _ in chosen], roots or common_root([p for p, _ in scored], to),
                        to, move=request.move, on_conflict=request.on_conflict, dry_run=request.dry_run,
                        journal=MoveJournal(store) if store is not None else None)


@dataclass
class TagOutcome:
    planned: list[tuple[str, list[str]]] = field(default_factory=list)  # (path, tags), in order
    changed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why its sidecar was left alone)


def write_tags(rows: Rows, rules: TagRules, dry_run: bool = False) -> TagOutcome:
    """Update each image's caption sidecar with its tags (these heads' earlier tags replaced, other text kept).

    A sidecar that can't be updated (not UTF-8, not a regular file, its image gone) is skipped and reported;
    the others are still written.
    """
    out = TagOutcome()
    owned = owner(rules, [r for _, r in rows[:1]])
    # sidecars are written only under the images' common folder, through folders walked from it without
    # following links (confined.py)
    with Area(common_root([p for p, _ in rows])) as area:
        for path, result in rows:
            tags = rules.tags_for(result)
            out.planned.append((path, tags))
            if dry_run:
                continue
            try:
                out.changed += write_sidecar(path, tags, owned, area=area)[1]
            except (SidecarError, ImageError) as e:
                out.skipped.append((path, str(e)))
    return out


__all__ = ["TagOutcome", "TransferRequest", "common_root", "transfer", "write_tags"]
