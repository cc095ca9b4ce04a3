"""cityclf query / grid / export / store-info: what a store holds, without loading any model."""

from __future__ import annotations

import contextlib
import sys

from ..errors import ConfigError
from ..pathtext import shown
from ..defaults import COMBINES
from ..numbers import COUNT
from ..store.lock import store_writer
from .common import (
    output_file,
    TOP_HELP,
    Problems,
    ResultWriter,
    act_and_report,
    bound_spec,
    acting,
    add_output_options,
    add_selection_options,
    finish_interrupted_moves,
    open_store,
    present,
    resolved_selection,
    selection,
)


def _stored(args):
    from ..dataset import stored_results

    with open_store(args.store, write=False) as store:
        return stored_results(store, args.head, args.combine, Problems().add)


def no_scores_message(store, args) -> str:
    """Why a store has no scores to show, and the command that makes them."""
    heads = {h: c for h, c in store.score_heads().items() if not args.head or h in args.head}
    which = f" for {', '.join(args.head)}" if args.head else ""
    others = sorted({combine for per in heads.values() for combine in per})
    if others:
        names = " ".join(f"--model {h}" for h in heads)
        return (f"store {args.store} has scores{which} made with --combine {', '.join(others)}, none with "
                f"--combine {args.combine}; make them with: cityclf score --store {args.store} {names} "
                f"--combine {args.combine}")
    return f"store {args.store} has no scores{which}; run cityclf score --store {args.store} --model ... first"


def ordered_heads(args, stored: list[str]) -> list[str]:
    """The heads in the order a bare --min/--max/--top refers to: as score does, the first head named (here by
    --head); with several stored heads and none named, a bare value is an error rather than a guess."""
    stored = sorted(stored)
    named = [h for h in (args.head or []) if h in stored]
    heads = named or stored
    bare = any(b.head is None for b in selection(args).bounds) or ((args.top or args.bottom) and not args.sort_by)
    if bare and not named and len(stored) > 1:
        raise ConfigError(f"a bare --min/--max/--top value needs a head: the store has scores of {', '.join(stored)}. "
                          "Write HEAD=VALUE (and --sort-by HEAD), or name the first head with --head, "
                          "as score takes its first --model")
    return heads


def stored_choice(store, args, problems: Problems):
    """What a command that selects stored scores (query, report) works on: the heads (ordered_heads), the count
    of images with the first's scores, the --min/--max/--top selection resolved, and the on_skip that reports
    a skipped row into `problems`. ConfigError when the store has no scores of the heads."""
    from ..dataset.percentiles import store_distribution

    stored = store.scored_heads(args.combine)
    if args.head and not any(h in stored for h in args.head):
        stored = []
    if not stored:
        raise ConfigError(no_scores_message(store, args))
    heads = ordered_heads(args, stored)
    total = store.count_scores(heads[0], args.combine)
    chosen_by = resolved_selection(args, heads, lambda: store_distribution(store, args.combine), total)

    def skipped(path, why):
        problems.add(path, why.replace("--store DB", f"--store {args.store}"))

    return heads, total, chosen_by, skipped


def cmd_query(args) -> int:
    from ..dataset.stored_select import common_folder, select_stored

    problems = Problems()
    with open_store(args.store, write=bool(args.move)) as store, \
            (store_writer(store.path) if args.move else contextlib.nullcontext()):
        finish_interrupted_moves(store, problems, args.dry_run)
        heads, total, chosen_by, skipped = stored_choice(store, args, problems)
        writer = ResultWriter(args.format, heads, sys.stdout, stored=True)
        keep, chosen, n = acting(args), [], 0
        for path, result in select_stored(store, heads, args.combine, chosen_by, on_skip=skipped):
            writer.write(path, result)  # streamed: memory holds a block, not the store
            n += 1
            if keep:
                chosen.append((path, result))
        return act_and_report(args, chosen if keep else n, total, problems,
                              common_folder(store, outside=args.copy or args.move) if keep else None, store,
                              verb="selected")


PICTURES = (".png", ".jpg", ".jpeg", ".webp")


def _picture_name(option: str, name: str | None) -> None:
    if name and not name.lower().endswith(PICTURES):
        raise ConfigError(f"{option} {name}: give a picture file name ending in .png, .jpg or .webp "
                          f"(e.g. {name}.png)")


def cmd_grid(args) -> int:
    from ..dataset import Selection
    from ..dataset.percentiles import needs_resolving, resolve, rows_distribution
    from ..grid import contact_sheet, histograms

    _picture_name("--out", args.out)
    _picture_name("--histogram", args.histogram)

    rows = _stored(args)
    if not rows:
        with open_store(args.store, write=False) as store:
            raise ConfigError(no_scores_message(store, args))
    problems = Problems()
    rows = present(rows, problems, args.store)
    chosen_by = Selection.parse(args.min, args.max, None, args.bottom, args.sort_by)
    if needs_resolving(chosen_by):  # HEAD=pNN: of the stored scores
        chosen_by = resolve(chosen_by, list(rows[0][1]), rows_distribution(rows), None)
    top = args.top if (args.top or args.bottom) else (None if chosen_by.bounds else 24)
    chosen = Selection(chosen_by.bounds, top, args.bottom, args.sort_by).apply(rows)
    if args.out:
        from ..dataset.select import value_of
        from ..scoring.pipeline import resolve_head_name

        head, _, label = (args.sort_by or "").partition(":")
        key = resolve_head_name(list(rows[0][1]), head or None)
        what = f"P({label})" if label else "score"  # what the rows are sorted by, shown first under each image
        items = [(p, [f"{key.split('-v')[0]} {what} {value_of(res, key, label or None):.3f}"]
                  + [f"{name.split('-v')[0]}: {r.kind.short_text(r)}" for name, r in res.items() if name != key])
                 for p, res in chosen]
        title = f"{'bottom' if args.bottom else 'top'} {len(items)} by {key} {what}"
        out = contact_sheet(items, args.out, thumb=args.thumb, title=title)
        print(f"cityclf: wrote {out} ({len(items)} images)", file=sys.stderr)
    if args.histogram:
        names = list(rows[0][1])
        series = {n: [res[n].score for _, res in rows if n in res] for n in names}
        out = histograms(series, args.histogram)
        print(f"cityclf: wrote {out}", file=sys.stderr)
    if not args.out and not args.histogram:
        raise ConfigError("nothing to draw: give --out SHEET.png and/or --histogram HIST.png")
    return 1 if len(problems) else 0


def cmd_export(args) -> int:
    from ..confined import replacing
    from ..loading.clips import clip_identity, source_name

    with open_store(args.store, write=False) as store:
        if not store.encoders():
            raise ConfigError(f"store {args.store} holds no embeddings yet")
        rows = [store.find_encoder(clip_identity(args.clip), source_name(args.clip))] if args.clip else None
        sets = [(p.encoder, p.policy) for p in store.policies()
                if rows is None or p.encoder.id == rows[0].id]
        if args.policy:
            known = sorted({p for _, p in sets})
            sets = [(e, p) for e, p in sets if p == args.policy]
            if not sets:
                raise ConfigError(f"store {args.store} has no embeddings with --policy {args.policy}; "
                                  f"it has: {', '.join(known)}")
        if not sets:
            raise ConfigError(f"store {args.store} holds no embeddings of that CLIP")
        out = args.out if args.out.endswith(".npz") else args.out + ".npz"  # as numpy names it
        with replacing(out) as tmp, open(tmp, "wb") as f:  # a full disk leaves the old file, not half a new one
            counts = store.export_sets(f, sets)
    for (row, policy), n in zip(sets, counts):
        print(f"cityclf: wrote {args.out}: {n} images, CLIP {row.source}, {policy}", file=sys.stderr)
    if len(sets) > 1:
        print(f"cityclf: {len(sets)} sets of embeddings, named in its 'sets' array (arrays NAME.paths, "
              "NAME.offsets, NAME.embeddings)", file=sys.stderr)
    return 0


def cmd_percentiles(args) -> int:
    import json
    from pathlib import Path

    from ..dataset.percentiles import reference_table
    from ..confined import atomic_write

    if not args.out.lower().endswith(".json"):
        raise ConfigError(f"--out {args.out}: give a file name ending in .json (e.g. {args.out}.json)")
    with open_store(args.store, write=False) as store:
        stored = store.scored_heads(args.combine)
        heads = [h for h in stored if not args.head or h in args.head]
        missing = [h for h in args.head or [] if h not in stored]
        if missing or not heads:
            raise ConfigError(no_scores_message(store, args) if not stored else
                              f"store {args.store} has no scores of {', '.join(missing or args.head)} "
                              f"(with --combine {args.combine}); it has: {', '.join(stored)}")
        classes = {}
        for h in heads:
            sample = store.scores([h], args.combine, paths=[store.sample_path(h, args.combine)])
            extra = next(iter(sample.values()))[h].extra
            classes[h] = sorted(extra) if isinstance(extra, dict) else []
        table = reference_table(lambda h, label: store.score_values(h, args.combine, label), heads, classes,
                                args.combine)
    out = Path(args.out)
    atomic_write(out, (json.dumps(table, indent=1) + "\n").encode("utf-8"))
    for head, entry in table["heads"].items():
        q = entry["score"]
        print(f"{head}: {entry['count']} scores; p10 {q[100]:.3f}  p50 {q[500]:.3f}  p80 {q[800]:.3f}  "
              f"p90 {q[900]:.3f}")
    print(f"cityclf: wrote {out} (percentiles 0 to 100 in steps of 0.1 for {len(table['heads'])} head(s))",
          file=sys.stderr)
    return 0


def cmd_prune(args) -> int:
    import os

    with open_store(args.store) as store, store_writer(store.path):
        report = store.prune(lambda p: not os.path.exists(p), dry_run=args.dry_run)
    verb = "would forget" if args.dry_run else "forgot"
    for path in report.files:
        print(f"cityclf: {verb} {shown(path)} (gone)", file=sys.stderr)
    shared = f"; {report.kept_shared} kept, as another path has the same content" if report.kept_shared else ""
    print(f"cityclf: {verb} {len(report.files)} file(s) no longer on disk, {report.embeddings} embedding set(s) "
          f"and {report.scores} score(s) only they had{shared}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("query", help="select and act on stored scores (no models needed)",
                       description="Print, select, sort, copy, move or tag images by the scores a store holds "
                                   "(made by cityclf score --store or embed + score): no model is loaded.")
    p.add_argument("--store", required=True, metavar="DB", help="the store with the scores")
    p.add_argument("--head", action="append", metavar="NAME", help="only these heads' scores (default: all)")
    p.add_argument("--combine", choices=COMBINES, default="mean", help="the tile combine the scores were made with")
    add_selection_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("grid", help="a contact sheet and score histograms from stored scores",
                       description="Draw a contact sheet of stored images with their scores (--out) and/or a "
                                   "histogram of each head's scores (--histogram), from stored scores.")
    p.add_argument("--store", required=True, metavar="DB", help="the store with the scores")
    p.add_argument("--out", metavar="PNG", type=output_file, help="the contact sheet to write (.png, .jpg or .webp)")
    p.add_argument("--histogram", metavar="PNG", type=output_file, help="a histogram of each head's scores (.png, .jpg or .webp)")
    p.add_argument("--head", action="append", metavar="NAME", help="only these heads (default: all)")
    p.add_argument("--combine", choices=COMBINES, default="mean",
                   help="the tile combine the scores were made with (default: mean)")
    p.add_argument("--min", action="append", default=[], metavar="SPEC", type=bound_spec("min"),
                   help="as for score: a band to show")
    p.add_argument("--max", action="append", default=[], metavar="SPEC", type=bound_spec("max"),
                   help="as for score: a band to show")
    p.add_argument("--top", type=COUNT, metavar="N",
                   help="the N highest by --sort-by (default: 24 unless a band is given). " + TOP_HELP.split(". ", 1)[1])
    p.add_argument("--bottom", type=COUNT, metavar="N", help="the N lowest by --sort-by")
    p.add_argument("--sort-by", metavar="HEAD[:CLASS]", help="the head (or class) to order by (default: as score)")
    p.add_argument("--thumb", type=COUNT, default=256, metavar="PX", help="thumbnail size (default 256)")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("export", help="export stored embeddings to a numpy .npz",
                       description="Write stored embeddings to a numpy .npz: every (CLIP, crop policy) set the "
                                   "store holds, or the ones --clip/--policy choose. One set: arrays paths, "
                                   "offsets, embeddings; several: a 'sets' array of names and NAME.paths, "
                                   "NAME.offsets, NAME.embeddings per set.")
    p.add_argument("--store", required=True, metavar="DB", help="the store to read")
    p.add_argument("--out", required=True, metavar="NPZ", type=output_file, help="the .npz file to write")
    p.add_argument("--clip", metavar="ID_OR_DIR", help="only this CLIP's embeddings (default: every CLIP's)")
    p.add_argument("--policy", help="only this crop policy's embeddings, e.g. whole or tiles:672:1536:up "
                                    "(default: every policy; store-info lists them)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("percentiles", help="save each head's score percentiles (a reference for HEAD=pNN)",
                       description="Write each head's (and class's) score percentiles in the store, from 0 to 100 "
                                   "in steps of 0.1, to a JSON file: a reference for --min HEAD=p80 --reference "
                                   "FILE and for the Gate node's percentile rules (put it in "
                                   "models/cityclassifiers/reference/).")
    p.add_argument("--store", required=True, metavar="DB", help="the store with the scores")
    p.add_argument("--out", required=True, metavar="JSON", help="the reference file to write (.json)")
    p.add_argument("--head", action="append", metavar="NAME", help="only these heads (default: all)")
    p.add_argument("--combine", choices=COMBINES, default="mean", help="the tile combine the scores were made with")
    p.set_defaults(func=cmd_percentiles)

    p = sub.add_parser("prune", help="forget stored files that are gone from disk (renamed or deleted)",
                       description="Forget the rows of files that no longer exist: their scores, and their "
                                   "embeddings unless another stored path has the same content (a renamed file "
                                   "that was embedded again keeps them). Prints what it removed.")
    p.add_argument("--store", required=True, metavar="DB", help="the store to prune")
    p.add_argument("--dry-run", action="store_true", help="print what would be forgotten, change nothing")
    p.set_defaults(func=cmd_prune)
