"""cityclf dedupe / report: near-duplicates and a browsable gallery, from what a store holds (no models)."""

from __future__ import annotations

import contextlib
import json
import os
import sys

from ..defaults import COMBINES
from ..errors import ConfigError
from ..numbers import COUNT, real
from ..pathtext import shown
from ..store.lock import store_writer
from .common import (Problems, add_choice_options, finish_interrupted_moves, open_store, output_file,
                     report_transfers)

#: a cosine similarity (numbers.py: NaN, infinities and words are refused while the options are read)
COSINE = real(-1.0, 1.0)


def _write_jsonl(path: str, rows: list[dict]) -> None:
    """Write JSONL atomically (confined.atomic_write: a kill leaves the old file or the new one)."""
    from ..confined import atomic_write

    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))


def _check_outputs(args) -> None:
    """Refuse unusable output names before any work (output_file has checked that they can be written)."""
    if args.sheet and not args.sheet.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
        raise ConfigError(f"--sheet {args.sheet}: give a picture file name ending in .png, .jpg or .webp")


def cmd_dedupe(args) -> int:
    from ..dataset import TransferRequest, transfer
    from ..dataset.dedupe import find_duplicates, group_rows
    from ..dataset.stored_select import common_folder

    _check_outputs(args)
    problems = Problems()
    acting = bool(args.copy or args.move)
    clip = None
    if args.clip:
        from ..loading import clip_identity

        clip = clip_identity(args.clip)
    with open_store(args.store, write=bool(args.move)) as store, \
            (store_writer(store.path) if args.move else contextlib.nullcontext()):  # one writer per store
        finish_interrupted_moves(store, problems, args.dry_run)
        groups = find_duplicates(store, args.threshold, head=args.head, combine=args.combine, clip_identity=clip,
                                 method=args.method, exists=os.path.exists)
        rows = group_rows(groups)
        for row in rows:
            if args.format == "jsonl":
                print(json.dumps(row, ensure_ascii=False))
            else:
                print(f"group {row['group']} (similarity >= {row['similarity']:.4f}): keep {shown(row['keep'])}")
                for other in row["others"]:
                    print(f"    {shown(other)}")
        if args.out:
            _write_jsonl(args.out, rows)
            print(f"cityclf: wrote {args.out} ({len(rows)} group(s))", file=sys.stderr)
        if args.sheet and groups:
            from ..grid import contact_sheet

            items = []
            for k, g in enumerate(groups, 1):
                for p in g.members:
                    what = "keep" if p == g.keep else "duplicate"
                    score = f", {args.head}: {g.scores[p]:.3f}" if p in g.scores else ""
                    items.append((p, [f"group {k}: {what}{score}"]))
            out = contact_sheet(items, args.sheet, thumb=args.thumb,
                                title=f"{len(groups)} group(s) of near-duplicates, cosine >= {args.threshold}",
                                columns=max(min(max(len(g.members) for g in groups), 8), 2))
            print(f"cityclf: wrote {out}", file=sys.stderr)
        others = [p for g in groups for p in g.others]
        if acting:
            dest = args.copy or args.move
            request = TransferRequest(dest, move=bool(args.move), on_conflict=args.on_conflict, dry_run=args.dry_run)
            chosen = [(p, {}) for p in others]
            plan = transfer(chosen, chosen, common_folder(store, outside=dest), request, store)
            report_transfers(plan, args.dry_run, problems, request.verb)
    problems.write_report(getattr(args, "report", None))
    kept = len(groups)
    print(f"cityclf: {kept} group(s) of near-duplicates: {kept} image(s) kept, {len(others)} "
          f"{'duplicate(s) ' + ('would be ' if args.dry_run else '') + ('moved' if args.move else 'copied') if acting else 'duplicate(s) found'}",
          file=sys.stderr)
    return 1 if len(problems) else 0


def cmd_report(args) -> int:
    from ..dataset.report import write_report
    from .stored import stored_choice

    problems = Problems()
    with open_store(args.store, write=False) as store:
        heads, total, chosen_by, skipped = stored_choice(store, args, problems)
        summary = write_report(store, heads, args.combine, chosen_by, args.out, thumb=args.thumb,
                               workers=args.workers, on_skip=skipped)
    problems.write_report(args.report)
    index = os.path.join(str(summary.out), "index.html")
    print(f"cityclf: wrote {shown(index)}: {summary.rows} of {total} image(s), {summary.thumbs_made} thumbnail(s) "
          f"made, {summary.thumbs_reused} reused, in {summary.seconds:.1f} s", file=sys.stderr)
    return 1 if len(problems) else 0


def register(sub) -> None:
    from ..dataset.dedupe import EXACT_UP_TO, METHODS

    p = sub.add_parser("dedupe", help="find near-duplicate images from stored embeddings; keep the best of each",
                       description="Group images whose whole-image CLIP embeddings have cosine similarity >= "
                                   "--threshold (pairs linked into groups), keep the best of each group (highest "
                                   "--head score, else the largest file) and list, copy or move the rest. "
                                   "Needs whole-image embeddings in the store (cityclf embed ... --no-tiling, or "
                                   "scoring with a whole-image head). Loads no model.")
    p.add_argument("--store", required=True, metavar="DB", help="the store with the embeddings")
    p.add_argument("--threshold", required=True, type=COSINE, metavar="T",
                   help="cosine similarity from which two images count as duplicates (e.g. 0.95; "
                        "resized or re-encoded copies are usually above 0.95)")
    p.add_argument("--head", metavar="NAME", help="keep the image with the highest stored score of this head "
                                                  "(default: the largest file)")
    p.add_argument("--combine", choices=COMBINES, default="mean", help="the tile combine of --head's scores")
    p.add_argument("--clip", metavar="ID_OR_DIR", help="whose embeddings, when the store has several CLIPs")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help=f"exact (blockwise, any size, O(N^2)), ann (faiss inverted-file search; needs the ann extra) or "
                        f"auto: exact up to {EXACT_UP_TO:,} images, else ann when faiss is installed")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--copy", metavar="DIR", help="copy the duplicates (not the kept images) here, keeping folders")
    act.add_argument("--move", metavar="DIR", help="move the duplicates here (the store follows; kill-safe)")
    p.add_argument("--on-conflict", choices=("rename", "skip", "error"), default="rename",
                   help="when a destination name holds other content: rename (name-1.png), skip or error")
    p.add_argument("--dry-run", action="store_true", help="print what would be copied or moved, change nothing")
    p.add_argument("--sheet", type=output_file, metavar="PNG", help="draw the groups on a contact sheet, each image labelled with its group")
    p.add_argument("--thumb", type=COUNT, default=192, metavar="PX", help="sheet thumbnail size (default 192)")
    p.add_argument("--out", type=output_file, metavar="JSONL", help="write the groups as JSONL (keep, others, similarity, members)")
    p.add_argument("--format", choices=("table", "jsonl"), default="table",
                   help="how groups are printed on stdout: table (default) or jsonl")
    p.add_argument("--report", type=output_file, metavar="FILE", help="write skipped files and why, as JSONL")
    p.set_defaults(func=cmd_dedupe)

    p = sub.add_parser("report", help="a static HTML gallery of stored scores (open index.html in a browser)",
                       description="Write a folder that opens from file:// in any browser, with no server and "
                                   "no network: a grid of thumbnails with scores, labels and caption tags; sort "
                                   "by any head or class, range filters per head, score histograms, and a click "
                                   "for the full image and all its numbers. The page's filters and sort give the "
                                   "rows `cityclf query` gives with the same options, in the same order. "
                                   "--min/--max/--top choose which images go in (default: all). A rerun into the "
                                   "same folder replaces it whole and reuses thumbnails of unchanged images.")
    p.add_argument("--store", required=True, metavar="DB", help="the store with the scores")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the report folder: new, empty, or a previous report (anything else is refused)")
    p.add_argument("--head", action="append", metavar="NAME", help="only these heads (default: all)")
    p.add_argument("--combine", choices=COMBINES, default="mean", help="the tile combine the scores were made with")
    add_choice_options(p.add_argument_group("which images go in (as for query; default: all)"))
    p.add_argument("--thumb", type=COUNT, default=192, metavar="PX", help="thumbnail size in pixels (default 192)")
    p.add_argument("--workers", type=COUNT, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="threads making thumbnails (default: up to 4)")
    p.add_argument("--report", type=output_file, metavar="FILE", help="write skipped files and why, as JSONL")
    p.set_defaults(func=cmd_report)
