"""cityclf score / embed / merge / import-shards: images to scores, images to stored embeddings, stores into one,
shards a Ray run wrote into a store."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from ..pathtext import safe_text, shown
from ..progress import ProgressBar
from ..store.lock import store_writer
from .engine import add_engine_options, run_engine
from .common import (
    output_file,
    Problems,
    ResultWriter,
    add_crop_options,
    add_model_options,
    add_output_options,
    add_selection_options,
    act_and_report,
    acting,
    file_progress,
    finish,
    finish_interrupted_moves,
    listed_files,
    load_model,
    loading_what,
    model_spec,
    present,
    progress_enabled,
    say_loading,
    score_options,
    selection,
)


def cmd_score(args) -> int:
    from ..dataset import score_files

    engine_status = run_engine(args, "score")
    if engine_status is not None:
        return engine_status
    if not args.paths and not args.store:
        raise ConfigError("give images (files or folders) to score, or --store DB to score stored embeddings")
    if args.store:
        return _score_with_store(args)
    from ..scoring.images import find_images

    files, missing = find_images(args.paths)
    bar = ProgressBar(len(files), "img", enabled=progress_enabled(args), label="scoring")
    problems = Problems(bar)
    for path, reason in missing:
        problems.add(path, reason)
    model = load_model(args)
    rows = []
    stream = not selection(args).active
    writer = ResultWriter(args.format, model.names, sys.stdout)
    with bar:
        for name, result in score_files(model, files, score_options(args), problems.add, bar.set):
            if stream:
                writer.write(name, result)
            rows.append((name, result))
    return finish(args, rows, problems, roots=args.paths, writer=None if stream else writer, model=model)


def _score_with_store(args) -> int:
    from ..dataset import save_results, score_store
    from ..dataset.stored_model import load_stored_model
    from ..store import EmbeddingStore

    problems = Problems()
    paths = None
    with EmbeddingStore(args.store, create=bool(args.paths)) as store, store_writer(store.path):  # scores are saved
        finish_interrupted_moves(store, problems, args.dry_run)
        if args.paths:  # embed what is missing first, with the CLIPs loaded; score with that same model
            paths, model = _embed_into(args, store, problems)
            reported = {p for p, _ in problems.items}  # skipped while embedding: not again as "not in the store"
            paths = [p for p in paths if p not in reported]
        else:  # no CLIP needed: the heads are bound to the CLIPs recorded in the store
            model = load_stored_model(args.model, store, clip=args.clip, pairing=args.pairing,
                                      allow_download=not args.offline, models_dir=args.models_dir,
                                      tile_size=args.tile_size)
        stream = not selection(args).active
        keep = not stream or acting(args)  # else rows are written and counted, not kept: memory stays flat
        writer = ResultWriter(args.format, model.names, sys.stdout, stored=True)
        rows, n = [], 0
        for results, missing in score_store(store, model, paths, args.combine, args.tiling, args.upscale):
            for path, why in missing:
                problems.add(path, why)
            save_results(store, results, args.combine)
            for path, result in present(results, problems, store.path):
                if stream:
                    writer.write(path, result)
                n += 1
                if keep:
                    rows.append((path, result))
        if not keep:
            return act_and_report(args, n, n, problems, args.paths, store)
        return finish(args, rows, problems, roots=args.paths, writer=None if stream else writer, store=store,
                      model=model)


def _embed_into(args, store, problems: Problems, shard: str | None = None):
    """Embed args.paths (shard K/N of them) into `store` for the heads' CLIP passes; (absolute paths, model or None).

    The caller holds the store's lock (taken before any CLIP is loaded).
    """
    from ..dataset import embed_files
    from ..dataset.passes import choose_clips

    paths = listed_files(args.paths, problems, shard)
    job = choose_clips(store, model_spec(args), paths, args.device,
                       on_load=lambda: say_loading(loading_what(args), args))
    if not job.loaded:
        print(f"cityclf: {len(paths)} file(s), 0 embedded, {len(paths)} already in the store "
              "(nothing to embed: the CLIP was not loaded)", file=sys.stderr)
        return paths, job.model
    with file_progress(args, problems, len(paths)) as on_file:
        report = embed_files(store, job.passes, paths, batch_size=args.batch_size, workers=args.workers,
                             max_pixels=args.max_pixels, on_file=on_file)
    for path, note in report.notes:
        print(f"cityclf: note {shown(path)}: {safe_text(note)}", file=sys.stderr)
    print(f"cityclf: {report.summary()}", file=sys.stderr)
    return paths, job.model


def cmd_embed(args) -> int:
    from ..store import EmbeddingStore

    engine_status = run_engine(args, "embed", shard=args.shard)
    if engine_status is not None:
        return engine_status
    if not args.model and not args.clip:
        raise ConfigError("name the heads (--model) whose CLIP and crops to embed for, or a --clip")
    problems = Problems()
    with EmbeddingStore(args.store) as store, store_writer(store.path):
        finish_interrupted_moves(store, problems)
        _embed_into(args, store, problems, shard=args.shard)
    problems.write_report(args.report)
    return 1 if len(problems) else 0


def cmd_merge(args) -> int:
    from ..store import merge_stores

    added = merge_stores(args.store, args.sources)
    print(f"cityclf: merged {len(args.sources)} store(s) into {args.store}: " +
          ", ".join(f"{n} {what}" for what, n in added.items()), file=sys.stderr)
    return 0


def cmd_import_shards(args) -> int:
    import os

    from ..engines import parquet
    from ..store import EmbeddingStore

    for folder in args.folders:
        if not os.path.isdir(folder):
            raise ConfigError(f"{folder}: not a folder; give the shard folder an --engine ray run wrote into "
                              "(DB.shards beside its store, or its --shard-dir)")
    parquet.require_pyarrow()  # before the store is made
    imported = files = whole = 0
    with EmbeddingStore(args.store) as store, store_writer(args.store):
        for folder in args.folders:  # whole shards only: the parts of a run still going on are left alone
            whole += len(parquet.whole_shards(folder))
            for shard in parquet.pending_shards(store, folder):
                files += len(parquet.import_shard(store, shard).rows)
                imported += 1
    print(f"cityclf: imported {imported} shard(s) ({files} file(s)) into {shown(args.store)}; "
          f"{whole - imported} already imported", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("score", help="score image files and folders (walked recursively), or a store",
                       description="Score images with one or more heads. Folders are walked recursively. With "
                                   "--store, embeddings are kept (and reused), and with --store alone the stored "
                                   "embeddings are scored without loading CLIP.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    add_model_options(p)
    add_crop_options(p)
    p.add_argument("--store", metavar="DB", help="an embedding store (SQLite file): embed into it, score from it")
    add_selection_options(p)
    add_output_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("embed", help="compute CLIP embeddings into a store (resumable)",
                       description="Embed images into a store, for each CLIP and crop policy the heads need; "
                                   "unchanged files are skipped, so a killed run continues where it stopped.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--store", required=True, metavar="DB", help="the store file (created if missing)")
    add_model_options(p, required=False)
    add_crop_options(p)
    p.add_argument("--shard", metavar="K/N", help="embed only shard K of N (0-based): a stable split by path, for "
                                                  "running one job per machine into separate stores; see merge")
    p.add_argument("--report", metavar="FILE", type=output_file, help="write skipped files and why, as JSONL")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_engine_options(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("merge", help="merge stores (e.g. one per shard) into one",
                       description="Merge stores (e.g. one per --shard) into one. Rows are keyed by content, so "
                                   "parts merge without conflicts (rows already in the target win). All or "
                                   "nothing: every part is checked first and the merge is renamed into place "
                                   "only when complete.")
    p.add_argument("sources", nargs="+", metavar="DB", help="the stores to merge in")
    p.add_argument("--store", required=True, metavar="DB", help="the store to merge into (created if missing)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("import-shards", help="import the Parquet shards of --engine ray runs into a store",
                       description="Import the whole shards in shard folders (written by --engine ray workers: "
                                   "DB.shards, or --shard-dir) into a store, each shard in one transaction and "
                                   "recorded, so a shard is imported once however often this runs. Runs anywhere "
                                   "the folder is readable, e.g. into a copy of the store on another machine; the "
                                   "parts of a run still going on are left alone. Needs pyarrow (the ray extra), not Ray.")
    p.add_argument("folders", nargs="+", metavar="DIR", help="shard folders")
    p.add_argument("--store", required=True, metavar="DB", help="the store to import into (created if missing)")
    p.set_defaults(func=cmd_import_shards)
