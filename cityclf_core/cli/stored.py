"""cityclf query / grid / export / store-info: what a store holds, without loading any model."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from ..reduce import COMBINES
from .common import (
    Problems,
    ResultWriter,
    add_output_options,
    add_selection_options,
    finish,
    finish_interrupted_moves,
    open_store,
)


def _stored(args):
    from ..dataset import stored_results

    with open_store(args.store, write=False) as store:
        return stored_results(store, args.head, args.combine, Problems().add)


def cmd_query(args) -> int:
    from ..dataset import stored_results

    problems = Problems()
    with open_store(args.store, write=bool(args.move)) as store:
        finish_interrupted_moves(store, problems, args.dry_run)
        rows = stored_results(store, args.head, args.combine, problems.add)
        if not rows:
            raise ConfigError(f"store {args.store} has no scores{' for ' + ', '.join(args.head) if args.head else ''}"
                              "; run cityclf score --store ... --model ... first")
        writer = ResultWriter(args.format, list(rows[0][1]), sys.stdout)
        return finish(args, rows, problems, roots=None, writer=writer, store=store)


def cmd_grid(args) -> int:
    from ..dataset import Selection
    from ..grid import contact_sheet, histograms

    rows = _stored(args)
    if not rows:
        raise ConfigError(f"store {args.store} has no scores; run cityclf score --store ... --model ... first")
    chosen_by = Selection.parse(args.min, args.max, None, args.bottom, args.sort_by)
    top = args.top if (args.top or args.bottom) else (None if chosen_by.bounds else 24)
    chosen = Selection(chosen_by.bounds, top, args.bottom, args.sort_by).apply(rows)
    if args.out:
        items = [(p, [f"{name.split('-v')[0]}: {r.kind.short_text(r)}" for name, r in res.items()])
                 for p, res in chosen]
        title = f"{'bottom' if args.bottom else 'top'} {len(items)} by {args.sort_by or list(rows[0][1])[0]}"
        out = contact_sheet(items, args.out, thumb=args.thumb, title=title)
        print(f"cityclf: wrote {out} ({len(items)} images)", file=sys.stderr)
    if args.histogram:
        names = list(rows[0][1])
        series = {n: [res[n].score for _, res in rows if n in res] for n in names}
        out = histograms(series, args.histogram)
        print(f"cityclf: wrote {out}", file=sys.stderr)
    if not args.out and not args.histogram:
        raise ConfigError("nothing to draw: give --out SHEET.png and/or --histogram HIST.png")
    return 0


def cmd_export(args) -> int:
    from ..loading import clip_identity, source_name

    with open_store(args.store, write=False) as store:
        encoders = store.encoders()
        if not encoders:
            raise ConfigError(f"store {args.store} holds no embeddings yet")
        if args.clip:
            row = store.find_encoder(clip_identity(args.clip), source_name(args.clip))
        elif len(encoders) == 1:
            row = encoders[0]
        else:
            raise ConfigError("the store holds embeddings of several CLIPs; choose one with --clip: " +
                              ", ".join(e.source for e in encoders))
        policies = sorted(p.policy for p in store.policies(row))
        policy = args.policy or (policies[0] if len(policies) == 1 else None)
        if policy not in policies:
            raise ConfigError(f"choose --policy among: {', '.join(policies)}")
        n = store.export_numpy(args.out, row, policy)
    print(f"cityclf: wrote {args.out}: {n} images, CLIP {row.source}, {policy}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("query", help="select and act on stored scores (no models needed)")
    p.add_argument("--store", required=True, metavar="DB")
    p.add_argument("--head", action="append", metavar="NAME", help="only these heads' scores (default: all)")
    p.add_argument("--combine", choices=COMBINES, default="mean", help="the tile combine the scores were made with")
    add_selection_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("grid", help="a contact sheet and score histograms from stored scores")
    p.add_argument("--store", required=True, metavar="DB")
    p.add_argument("--out", metavar="PNG", help="the contact sheet to write")
    p.add_argument("--histogram", metavar="PNG", help="a histogram of each head's scores")
    p.add_argument("--head", action="append", metavar="NAME", help="only these heads (default: all)")
    p.add_argument("--combine", choices=COMBINES, default="mean")
    p.add_argument("--min", action="append", default=[], metavar="SPEC", help="as for score: a band to show")
    p.add_argument("--max", action="append", default=[], metavar="SPEC")
    p.add_argument("--top", type=int, metavar="N", help="the N best (default: 24 unless a band is given)")
    p.add_argument("--bottom", type=int, metavar="N", help="the N worst")
    p.add_argument("--sort-by", metavar="HEAD[:CLASS]")
    p.add_argument("--thumb", type=int, default=256, metavar="PX", help="thumbnail size (default 256)")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("export", help="export stored embeddings to a numpy .npz")
    p.add_argument("--store", required=True, metavar="DB")
    p.add_argument("--out", required=True, metavar="NPZ")
    p.add_argument("--clip", metavar="ID_OR_DIR", help="which CLIP's embeddings (when the store has several)")
    p.add_argument("--policy", help="which crop policy's embeddings, e.g. whole or tiles:672:1536:up")
    p.set_defaults(func=cmd_export)
