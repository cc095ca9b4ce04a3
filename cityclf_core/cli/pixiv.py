"""cityclf pixiv ingest / synth / train / eval: popularity from Pixiv metadata (see cityclf_core/pixiv)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from ..numbers import COUNT, PIXELS
from ..progress import ProgressBar
from .common import Problems, output_file, output_folder, progress_enabled


def cmd_ingest(args) -> int:
    from ..pixiv.ingest import ingest

    report = ingest(args.dataset, require_images=not args.metadata_only, crawled=args.crawled)
    problems = Problems()
    for path, why in report.skipped:
        problems.add(path, why)
    for path, note in report.notes:
        print(f"cityclf: note: {path}: {note}", file=sys.stderr)
    for warning in report.warnings:
        print(f"cityclf: warning: {warning}", file=sys.stderr)
    problems.write_report(args.report)
    print(f"cityclf: {report.summary()}", file=sys.stderr)
    return 1 if len(problems) else 0


def cmd_synth(args) -> int:
    from ..pixiv.synth import synthesize

    report = synthesize(args.out, works=args.works, artists=args.artists, size=args.size, seed=args.seed)
    print(f"cityclf: wrote {report.works} works ({report.images} pictures) by {report.artists} artists into "
          f"{report.out}; next: cityclf pixiv ingest {report.out}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from ..loading.catalogue import load_head
    from ..pixiv.config import load_settings
    from ..pixiv.evaluate import popularity_metrics
    from ..pixiv.splits import make_split
    from ..pixiv.training import describe_split, fit_and_train, load_data, predict
    from ..train import format_metrics

    settings = load_settings(args.config)
    data = load_data(settings)
    _left_out(data.left_out, args.verbose)
    split = make_split(settings.split, data.records, settings.test_fraction, settings.val_fraction, settings.seed)
    print(f"cityclf: {describe_split(data, split)}", file=sys.stderr)
    out = Path(args.out)
    test_path = out / f"{settings.base}-{settings.rev}.test.json"
    if test_path.exists() and not args.overwrite:
        raise ConfigError(f"{test_path} already exists; choose a new model.rev, another --out, or --overwrite")
    total = [0]
    bar = ProgressBar(1, "step", enabled=progress_enabled(args), label="training")

    def progress(step, steps):
        if total[0] != steps:
            total[0] = bar.total = steps
        bar.set(step)

    with bar:
        result, target = fit_and_train(settings, data, split, settings.arch, out, overwrite=args.overwrite,
                                       log=bar.write, progress=progress)
    print(format_metrics(result.metrics))
    head = load_head(result.weights)
    test = split.test
    scores = target.score(data.records.subset(test))
    keep = test[scores == scores]
    m = popularity_metrics(predict(head, data, keep)[:, 0], target.score(data.records.subset(keep)),
                           data.records.subset(keep))
    print(f"test ({settings.split} split, {m['n']} works): Spearman {m['spearman']:.3f}, Pearson {m['pearson']:.3f}, "
          f"MAE {m['mae']:.4f}, top-10% precision {m['top10_precision']:.2f}")
    tmp = test_path.with_name(test_path.name + ".tmp")
    tmp.write_text(json.dumps(m, indent=2, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, test_path)
    for what, path in (("weights", result.weights), ("config", result.config), ("log", result.log),
                       ("curves", result.curves), ("metrics", result.metrics_path), ("test metrics", test_path)):
        print(f"cityclf: {what}: {path}", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from ..pixiv.ablation import evaluate_head, format_table, run_ablation, write_json
    from ..pixiv.config import load_settings
    from ..pixiv.training import load_data

    settings = load_settings(args.config)
    data = load_data(settings)
    _left_out(data.left_out, args.verbose)
    if args.head:
        m = evaluate_head(settings, args.head, data)
        ci = m.get("spearman.ci")
        print(f"test ({settings.split} split, {m['n']} works): Spearman {m['spearman']:.3f}"
              + (f" [95% CI {ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
              + f", within artists {m['spearman_within_artist']:.3f}, between artists "
              f"{m['spearman_between_artist']:.3f}, top-10% precision {m['top10_precision']:.2f}")
        path = Path(args.out) / f"{Path(args.head).stem}.eval.json"  # --out was made when it was parsed
        write_json(path, m)
        print(f"cityclf: wrote {path}", file=sys.stderr)
        return 0
    table = run_ablation(settings, args.out, overwrite=args.overwrite, data=data,
                         log=lambda m: print(f"cityclf: {m}", file=sys.stderr))
    print(format_table(table))
    print(f"cityclf: wrote {Path(args.out) / 'ablation.json'}, ablation.png and reliability.png", file=sys.stderr)
    return 0


def _left_out(items: list, verbose: bool) -> None:
    if not items:
        return
    if verbose:
        for name, why in items:
            print(f"cityclf: left out {name}: {why}", file=sys.stderr)
    else:
        reasons: dict[str, int] = {}
        for _, why in items:
            key = "a later page of a work (one example per work)" if why.startswith("page ") else why
            reasons[key] = reasons.get(key, 0) + 1
        for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
            print(f"cityclf: left out {n} row(s): {why}", file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("pixiv", help="predict Pixiv popularity from the image: ingest, synth, train, eval",
                       description="Popularity heads on CLIP embeddings, learned from Pixiv metadata (gallery-dl "
                                   "sidecars). Steps: pixiv ingest DATASET, cityclf embed DATASET --store DB --clip "
                                   "CLIP, pixiv train --config FILE.yaml, pixiv eval --config FILE.yaml.")
    sp = p.add_subparsers(dest="pixiv_command", required=True, metavar="STEP")

    q = sp.add_parser("ingest", help="read gallery-dl sidecars into DATASET/.database/metadata.sqlite3")
    q.add_argument("dataset", metavar="DATASET_DIR", help="the gallery-dl download folder (images + .json sidecars)")
    q.add_argument("--metadata-only", action="store_true",
                   help="also ingest sidecars whose image is missing (metadata only: no training on them)")
    q.add_argument("--report", metavar="FILE", type=output_file, help="write skipped inputs and why, as JSONL")
    q.add_argument("--crawled", metavar="DATE", help="when the works were crawled (YYYY-MM-DD or an ISO time), for "
                   "sidecars whose mtime is the upload time (gallery-dl's mtime option)")
    q.set_defaults(func=cmd_ingest)

    q = sp.add_parser("synth", help="write a synthetic dataset in gallery-dl's layout (with a planted relation)")
    q.add_argument("out", metavar="OUT_DIR", help="where to write the pictures and their sidecars")
    q.add_argument("--works", type=COUNT, default=300, metavar="N", help="how many works (default 300)")
    q.add_argument("--artists", type=COUNT, default=30, metavar="N", help="how many artists (default 30)")
    q.add_argument("--size", type=PIXELS, default=64, metavar="PX", help="picture size (default 64)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.set_defaults(func=cmd_synth)

    for name, func, what in (("train", cmd_train, "train one popularity head (model.arch) on the config's split"),
                             ("eval", cmd_eval, "ablation: (a), (b), (c) and the metadata baseline on the same "
                                                "splits and seeds")):
        q = sp.add_parser(name, help=what)
        q.add_argument("--config", required=True, metavar="YAML", help="the pixiv config (data, target, model, "
                                                                        "train, eval sections)")
        q.add_argument("--out", default="pixiv-models" if name == "train" else "pixiv-eval", type=output_folder,
                       metavar="DIR", help="where the results go (made if missing; default: %(default)s)")
        q.add_argument("--overwrite", action="store_true", help="replace earlier results of the same name")
        q.add_argument("--verbose", action="store_true", help="list every work left out and why")
        q.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
        if name == "eval":
            q.add_argument("--head", metavar="FILE", help="evaluate this saved head on the config's split instead "
                           "of running the ablation (refused when that split tests works the head trained on)")
        q.set_defaults(func=func)
