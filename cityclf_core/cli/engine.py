"""--engine: where embed and score run (this process, or Ray Data on a local Ray or a cluster)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigError
from ..numbers import COUNT, real
from .common import Problems, ResultWriter, file_progress, finish, listed_files, model_spec, selection

GPUS = real(0.0)


def workers_arg(text: str) -> int | tuple[int, int | None]:
    """--workers: N, or (with --engine ray) MIN:MAX or MIN: (MAX: as many as the cluster can place)."""
    if ":" not in text:
        return COUNT(text)
    lo, hi = text.split(":", 1)
    return COUNT(lo), COUNT(hi) if hi.strip() else None


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (where embedding runs)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default): this process, --workers decoding threads. ray: Ray Data on a local Ray "
                        "or a cluster (--address); --workers is then the CLIP workers (N or MIN:MAX); the workers write "
                        "their results as Parquet shards (in DB.shards/, or --shard-dir), imported into the store")
    g.add_argument("--address", metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (HOST:6379, or auto for the one `ray start` "
                        "began on this machine); default: $RAY_ADDRESS, else a new local Ray")
    g.add_argument("--num-gpus-per-worker", type=GPUS, metavar="G",
                   help="with --engine ray: GPUs per CLIP worker, asked of Ray (an autoscaler starts GPU nodes "
                        "for them); default: 1 when the cluster has GPUs or GPU node types, else 0: CPU workers")
    g.add_argument("--files-per-shard", type=COUNT, default=1000, metavar="N",
                   help="with --engine ray: files per Parquet shard, the unit a rerun resumes from (default 1000)")
    g.add_argument("--shard-dir", metavar="DIR",
                   help="with --engine ray: the folder the workers write Parquet shards into (default: DB.shards "
                        "beside --store); on a cluster, a folder every node sees at the same path (shared storage); "
                        "one folder per store")
    for action in p._actions:  # the shared --workers (decoding threads) also takes Ray's MIN:MAX here
        if "--workers" in action.option_strings:
            action.type, action.metavar = workers_arg, "N|MIN:MAX"
            action.help = ("local engine: image decoding threads (default 2). --engine ray: CLIP workers, N or "
                           "MIN:MAX, an elastic pool (default 1:, from one up to as many as the cluster can place; "
                           "on a cluster without GPUs, decoding always keeps a CPU)")
    p.set_defaults(workers=None)  # given or not: decode threads locally (2 if not), CLIP workers on Ray


def shard_folder(path: str) -> str:
    """--shard-dir DIR, made if missing; ConfigError if it cannot be."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--shard-dir {path}: cannot make or use it ({e.strerror or e}); name a writable folder "
                          "(on a cluster, one every node sees at the same path)") from None
    return path


def run_engine(args, command: str, shard: str | None = None) -> int | None:
    """`--engine ray`: embed (and score) args.paths on Ray Data; None for the local engine (nothing done)."""
    if args.engine == "local":
        if args.workers is None:
            args.workers = 2
        elif isinstance(args.workers, tuple):
            raise ConfigError("--workers MIN:MAX is for --engine ray (its CLIP workers); the local engine takes "
                              "a number of decoding threads, e.g. --workers 4")
        if args.shard_dir:
            raise ConfigError("--shard-dir is for --engine ray (where its workers write shards); the local engine "
                              "writes into the store directly")
        return None
    import contextlib
    import tempfile

    from ..engines import require_ray

    require_ray()
    from ..engines.ray_cluster import address_of, session
    from ..engines.ray_data import RayOptions, run_job
    from ..engines.results import results_after_run
    from ..store import EmbeddingStore
    from ..store.lock import store_writer

    if not args.paths:
        raise ConfigError("--engine ray embeds image files: give PATH...; scoring stored embeddings "
                          "(score --store DB alone) needs no engine")
    problems = Problems()
    paths = listed_files(args.paths, problems, shard)
    spec = model_spec(args, score=command == "score")
    options = RayOptions(args.address, args.workers, args.num_gpus_per_worker, args.files_per_shard,
                         args.batch_size, args.device, args.max_pixels)
    with contextlib.ExitStack() as stack:  # score without --store: a store and shards for this run only
        if address_of(args.address):  # a cluster to join: joined (or refused) before any store or model is opened
            stack.enter_context(session(args.address))
        if args.shard_dir:  # made (or refused) before any store is
            shard_folder(args.shard_dir)
        db = args.store or os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "run.db")
        shards = args.shard_dir or f"{db}.shards"
        if args.shard_dir and not args.store:  # this run's shards only: a folder of its own in DIR, removed after
            shards = stack.enter_context(tempfile.TemporaryDirectory(prefix="cityclf-run-", dir=shards))
        store = stack.enter_context(EmbeddingStore(db))
        stack.enter_context(store_writer(db))  # the shards are imported into it
        with file_progress(args, problems, len(paths)) as on_file:
            report = run_job(store, spec, paths, shards, options, on_file,
                             on_note=lambda text: print(f"cityclf: note: {text}", file=sys.stderr, flush=True))
        if report.resumed:
            print(f"cityclf: imported {report.resumed} shard(s) an interrupted run had written", file=sys.stderr)
        for path, note in report.notes:
            print(f"cityclf: note {path}: {note}", file=sys.stderr)
        print(f"cityclf: {report.summary()}" + (f" (Parquet shards in {shards})" if args.store else ""),
              file=sys.stderr)
        if command == "embed":
            problems.write_report(args.report)
            return 1 if len(problems) else 0
        stream = not selection(args).active
        writer = ResultWriter(args.format, report.model.names, sys.stdout, stored=True)
        rows = []
        reported = {p for p, _ in problems.items}  # skipped while embedding: not again as "not in the store"
        paths = [p for p in paths if p not in reported]
        for results, why in results_after_run(store, report.model, paths, report.scored, args.combine,
                                              args.tiling, args.upscale):
            for path, reason in why:
                problems.add(path, reason)
            for path, result in results:
                if stream:
                    writer.write(path, result)
                rows.append((path, result))
        return finish(args, rows, problems, roots=args.paths, writer=None if stream else writer,
                       store=store if args.store else None)
