"""The `cityclf` command.

    cityclf score PATH... --model NAME_OR_FILE [--model ...] [--clip ID_OR_DIR]
                  [--tiling | --no-tiling] [--combine mean|median|max|min] [--format table|jsonl|csv]
                  [--store DB] [--min SPEC] [--max SPEC] [--top N] [--copy TO | --move TO] [--write-tags]
    cityclf score --store DB --model ...        score stored embeddings, no CLIP loaded
    cityclf embed PATH... --store DB --model ...  compute and keep embeddings (resumable)
    cityclf query --store DB [--min ...] [--top N] [--copy TO] ...   stored scores, no models
    cityclf grid --store DB --out sheet.png [--histogram hist.png]
    cityclf export --store DB --out embeddings.npz
    cityclf store-info --store DB
    cityclf models          the known releases and their CLIP pairings
    cityclf demo            build tiny models and sample images, then score them (no internet needed)

Exit status: 0 when every input was scored, 1 when any input was skipped (each
is reported on stderr, the rest are still processed), 2 for a usage or model
error, 130 when interrupted (a store keeps everything finished: rerun to go on).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from . import __version__
from .crops import COMBINES, CropPolicy
from .errors import CityClfError, ConfigError, ImageError
from .images import DEFAULT_MAX_PIXELS, find_images, iter_decoded, reason_for
from .progress import ProgressBar

FORMATS = ("table", "jsonl", "csv")


# ---------------------------------------------------------------- output


class ResultWriter:
    """Writes per-image results as they come, in one of FORMATS."""

    def __init__(self, fmt: str, heads: list[str], stream):
        self.fmt, self.heads, self.stream = fmt, heads, stream
        self._csv_writer = None
        self._header_done = False

    def write(self, path: str, results: dict) -> None:
        getattr(self, f"_{self.fmt}")(path, results)
        self.stream.flush()

    def _jsonl(self, path: str, results: dict) -> None:
        for name, r in results.items():
            if r.is_score:
                row = {"path": path, "model": name, "score": r.score}
            else:
                row = {"path": path, "model": name, "probs": r.probs, "label": r.label}
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")

    def _csv(self, path: str, results: dict) -> None:
        if self._csv_writer is None:
            self._csv_writer = csv.writer(self.stream, lineterminator="\n")
        if not self._header_done:
            header = ["path"]
            for name, r in results.items():
                header += [f"{name}:score"] if r.is_score else [f"{name}:label", f"{name}:score"] + [
                    f"{name}:{label}" for label in r.labels]
            self._csv_writer.writerow(header)
            self._header_done = True
        row = [path]
        for r in results.values():
            row += [f"{r.score:.6f}"] if r.is_score else [r.label, f"{r.score:.6f}"] + [
                f"{v:.6f}" for v in r.values]
        self._csv_writer.writerow(row)

    def _table(self, path: str, results: dict) -> None:
        if not self._header_done:
            self.stream.write("\t".join(["path", *results]) + "\n")
            self._header_done = True
        cells = [path]
        for r in results.values():
            cells.append(f"{r.score:.3f}" if r.is_score else f"{r.label} ({max(r.values):.2f})")
        self.stream.write("\t".join(cells) + "\n")


class Problems:
    """Skipped inputs: reported on stderr as they happen, optionally written to --report."""

    def __init__(self, bar: ProgressBar | None = None):
        self.items: list[tuple[str, str]] = []
        self.bar = bar

    def add(self, path, reason: str) -> None:
        self.items.append((str(path), reason))
        line = f"cityclf: skipped {path}: {reason}"
        (self.bar.write(line) if self.bar else print(line, file=sys.stderr))

    def write_report(self, path: str | None) -> None:
        if path:
            with open(path, "w", encoding="utf-8") as f:
                for p, why in self.items:
                    f.write(json.dumps({"path": p, "error": why}, ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------- options


def _add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--model", "-m", action="append", required=required, metavar="NAME_OR_FILE",
                   help="a head: a .safetensors file, or a release name such as CCAnime-Compression-v1.5 "
                        "(downloaded into --models-dir if missing). Repeat for several heads.")
    g.add_argument("--clip", metavar="ID_OR_DIR",
                   help="run every head on this CLIP (a transformers folder or hub id); default: each "
                        "release's own CLIP pairing, else openai/clip-vit-large-patch14-336")
    g.add_argument("--pairing", choices=("best", "alternative"), default="best",
                   help="which catalogue pairing to use for releases that have two (chromatic aberration: "
                        "best = ViT-L/14 with 512 px tiles as trained, alternative = the public demo's 336/672)")
    g.add_argument("--models-dir", metavar="DIR",
                   help="where heads are looked up and downloaded (default: $CITYCLF_MODELS or ~/.cache/cityclf/models)")
    g.add_argument("--offline", action="store_true",
                   help="never download; fail with a message naming what is missing")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    g.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="CLIP precision: auto = fp32 on CPU, bf16 (or fp16) on GPU; heads always run in fp32")


def _add_crop_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("crops")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--tiling", dest="tiling", action="store_const", const="on", default="auto",
                   help="five-crop tiling for every head (default: per head; classifiers tile, score models don't)")
    t.add_argument("--no-tiling", dest="tiling", action="store_const", const="off",
                   help="whole image for every head")
    g.add_argument("--no-upscale", dest="upscale", action="store_false",
                   help="never enlarge an image before tiling (the reference enlarges e.g. 1000x2000 to 1536x3072)")
    g.add_argument("--tile-size", type=int, metavar="PX", help="tile size in pixels (default: 2x the CLIP input size, "
                                                               "or the release's pairing)")
    g.add_argument("--combine", choices=COMBINES, default="mean", help="how tiles are combined per class (default: mean)")
    g.add_argument("--batch-size", type=int, metavar="N", help="views per CLIP forward (default: 8 on CPU, 64 on GPU)")
    g.add_argument("--workers", type=int, default=2, metavar="N", help="image decoding threads (default: 2)")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"skip images with more pixels (decompression-bomb guard; default {DEFAULT_MAX_PIXELS:,})")


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("selecting and acting on images")
    g.add_argument("--min", action="append", default=[], metavar="SPEC",
                   help="keep images scoring at least this: 0.6 (the first head), HEAD=0.6, or HEAD:CLASS=0.6 "
                        "(a class probability). Repeat to combine (all must hold).")
    g.add_argument("--max", action="append", default=[], metavar="SPEC", help="keep images scoring at most this")
    g.add_argument("--top", type=int, metavar="N", help="keep the N best by --sort-by")
    g.add_argument("--bottom", type=int, metavar="N", help="keep the N worst by --sort-by")
    g.add_argument("--sort-by", metavar="HEAD[:CLASS]", help="the head (or class) --top/--bottom use (default: first)")
    a = g.add_mutually_exclusive_group()
    a.add_argument("--copy", metavar="TO", help="copy the kept images under TO, keeping their sub-folders")
    a.add_argument("--move", metavar="TO", help="move the kept images under TO, keeping their sub-folders")
    g.add_argument("--on-conflict", choices=("rename", "skip", "error"), default="rename",
                   help="when a file exists at the destination: rename (name-1.png, default), skip, or error. "
                        "Existing files are never overwritten.")
    g.add_argument("--dry-run", action="store_true", help="print what --copy/--move/--write-tags would do, do nothing")
    g.add_argument("--write-tags", action="store_true",
                   help="update caption sidecars (image.txt) with tags, as the Tag node does: earlier tags of "
                        "these heads are replaced, other text is kept")
    g.add_argument("--tag-thresholds", default="0.5", metavar="T",
                   help="class probability for a tag: 0.5, or per head 'HEAD = 0.6; * = 0.5'")
    g.add_argument("--tag-bucket", choices=("none", "decile", "percent"), default="decile",
                   help="score heads add a bucket tag: aesthetic_70 (decile, default) or aesthetic_72 (percent)")
    g.add_argument("--tag-names", default="", metavar="MAP",
                   help="rename tags: 'CCAnime-Compression:JPEG = jpeg; CityAesthetics = aes'")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default), jsonl (one object per image and head), or csv (one row per image)")
    p.add_argument("--report", metavar="FILE", help="write skipped inputs and why, as JSONL")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (where embedding runs)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default): this process, --workers decoding threads. ray: Ray Data on a local Ray "
                        "or a cluster (--address); --workers is then the number of CLIP workers (default: one per "
                        "GPU, or one CPU worker); results go through Parquet shards in DB.shards/ into the store")
    g.add_argument("--address", metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (HOST:6379, or auto for the one `ray start` "
                        "began on this machine); default: $RAY_ADDRESS, else a new local Ray")
    g.add_argument("--num-gpus-per-worker", type=float, metavar="G",
                   help="with --engine ray: GPUs per CLIP worker (default: 1 when the cluster has GPUs, else 0: "
                        "CPU workers)")
    g.add_argument("--files-per-shard", type=int, default=1000, metavar="N",
                   help="with --engine ray: files per Parquet shard, the unit a rerun resumes from (default 1000)")
    p.set_defaults(workers=None)  # given or not: decode threads locally (2 if not), CLIP workers on Ray


def _run_engine(args, command: str) -> int | None:
    """`--engine ray`: embed (and score) args.paths on Ray Data; None for the local engine (nothing done)."""
    if args.engine == "local":
        if args.workers is None:
            args.workers = 2
        return None
    import contextlib
    import tempfile

    from .engines import require_ray

    require_ray()
    from .engines.ray_data import ModelSpec, RayOptions, run_job
    from .engines.results import results_after_run
    from .store import EmbeddingStore

    if not args.paths:
        raise ConfigError("--engine ray embeds image files: give PATH...; scoring stored embeddings "
                          "(score --store DB alone) needs no engine")
    problems = Problems()
    files, missing = find_images(args.paths)
    for path, reason in missing:
        problems.add(path, reason)
    if getattr(args, "shard", None):
        from .jobs import in_shard, parse_shard

        shard = parse_shard(args.shard)
        files = [f for f in files if in_shard(f, args.paths, shard)]
    paths = [os.path.abspath(p) for p in files]
    spec = ModelSpec(tuple(args.model or ()), args.clip, args.pairing, args.models_dir, not args.offline,
                     args.tile_size, args.dtype, args.tiling, args.upscale, getattr(args, "combine", "mean"),
                     score=command == "score")
    options = RayOptions(args.address, args.workers, args.num_gpus_per_worker, args.files_per_shard,
                         args.batch_size, args.device, args.max_pixels)
    with contextlib.ExitStack() as stack:  # score without --store: a store and shards for this run only
        db = args.store or os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "run.db")
        store = stack.enter_context(EmbeddingStore(db))
        bar = ProgressBar(len(paths), "img", enabled=_progress_enabled(args), label="embedding")
        problems.bar = bar

        def on_file(path, error):
            if error:
                problems.add(path, error)
            bar.update(1)

        with bar:
            report = run_job(store, spec, paths, f"{db}.shards", options, on_file)
        problems.bar = None
        if report.resumed:
            print(f"cityclf: imported {report.resumed} shard(s) an interrupted run had written", file=sys.stderr)
        for path, note in report.notes:
            print(f"cityclf: note {path}: {note}", file=sys.stderr)
        print(f"cityclf: {report.summary()}" + (f" (Parquet shards in {db}.shards)" if args.store else ""),
              file=sys.stderr)
        if command == "embed":
            problems.write_report(args.report)
            return 1 if len(problems) else 0
        stream = not _needs_all_rows(args)
        writer = ResultWriter(args.format, report.model.names, sys.stdout)
        rows = []
        for results, why in results_after_run(store, report.model, paths, report.scored, args.combine,
                                              args.tiling, args.upscale):
            for path, reason in why:
                problems.add(path, reason)
            for path, result in results:
                if stream:
                    writer.write(path, result)
                rows.append((path, result))
        return _finish(args, rows, problems, roots=args.paths, writer=None if stream else writer,
                       store=store if args.store else None)


def _progress_enabled(args) -> bool | None:
    return False if getattr(args, "no_progress", False) else None


def _load_model(args):
    from .loading import load_scoring_model

    return load_scoring_model(
        args.model, clip=args.clip, device=args.device, dtype=args.dtype, pairing=args.pairing,
        allow_download=not args.offline, models_dir=args.models_dir, tile_size=args.tile_size,
    )


# ---------------------------------------------------------------- score / embed


def cmd_score(args) -> int:
    engine_status = _run_engine(args, "score")
    if engine_status is not None:
        return engine_status
    if not args.paths and not args.store:
        raise ConfigError("give images (files or folders) to score, or --store DB to score stored embeddings")
    if args.store:
        return _score_with_store(args)
    files, missing = find_images(args.paths)
    bar = ProgressBar(len(files), "img", enabled=_progress_enabled(args), label="scoring")
    problems = Problems(bar)
    for path, reason in missing:
        problems.add(path, reason)
    model = _load_model(args)
    rows = []
    stream = not _needs_all_rows(args)
    writer = ResultWriter(args.format, model.names, sys.stdout)
    with bar:
        for name, result in iter_scored(args, model, files, problems, bar):
            if stream:
                writer.write(name, result)
            rows.append((name, result))
    return _finish(args, rows, problems, roots=args.paths, writer=None if stream else writer)


def iter_scored(args, model, files, problems: Problems, bar: ProgressBar):
    """(path, results) for each readable file, in order: decoding in threads, scoring in blocks."""
    block: list = []
    block_size = max(1, (args.batch_size or 8) // 2)
    opts = dict(tiling=args.tiling, combine=args.combine, upscale=args.upscale, batch_size=args.batch_size)

    def flush():
        base = bar.done
        pixels = [d.pixels for _, d in block]
        names = [str(p) for p, _ in block]
        try:
            results = model.score(pixels, names=names, **opts,
                                  on_progress=lambda d, t: bar.set(base + len(block) * d / max(t, 1)))
            pairs = list(zip(names, results))
        except ImageError:  # find the culprit, score the rest
            pairs = []
            for name, px in zip(names, pixels):
                try:
                    pairs.append((name, model.score([px], names=[name], **opts)[0]))
                except ImageError as e:
                    problems.add(name, str(e))
        bar.set(base + len(block))
        block.clear()
        return pairs

    for path, decoded, error in iter_decoded(files, workers=args.workers, max_pixels=args.max_pixels):
        if error:
            problems.add(path, reason_for(path, error))
            bar.update(1)
            continue
        block.append((path, decoded))
        if len(block) >= block_size:
            yield from flush()
    if block:
        yield from flush()


def _needs_all_rows(args) -> bool:
    return bool(args.min or args.max or args.top or args.bottom)


def _finish(args, rows, problems: Problems, roots, writer=None, store=None) -> int:
    """Select, print (unless already streamed), act (copy/move/tags), report; the exit status."""
    from .jobs import Bound, copy_or_move, select

    bounds = [Bound.parse(s, "min") for s in args.min] + [Bound.parse(s, "max") for s in args.max]
    chosen = select(rows, bounds, args.top, args.bottom, args.sort_by) if _needs_all_rows(args) else rows
    if writer is not None:
        for path, result in chosen:
            writer.write(path, result)
    if args.write_tags:
        _write_tags(args, chosen)
    if args.copy or args.move:
        # folders are kept relative to the inputs given, else to the common folder of everything scored
        # (not of the selection, which would make the layout depend on what was selected)
        plan = copy_or_move([p for p, _ in chosen], roots or _common_root([p for p, _ in rows]),
                            args.copy or args.move, move=bool(args.move), on_conflict=args.on_conflict,
                            dry_run=args.dry_run)
        for t in plan:
            verb = ("would " if args.dry_run else "") + t.action
            if t.error:
                print(f"cityclf: {t.action if t.action == 'skip' else 'failed to ' + t.action} {t.source}: {t.error}",
                      file=sys.stderr)
            else:
                print(f"cityclf: {verb} {t.source} -> {t.target}", file=sys.stderr)
            if t.done and args.move and store is not None:
                store.move_file(t.source, os.path.abspath(t.target))
        if any(t.error and t.action != "skip" for t in plan):
            problems.add("--" + ("move" if args.move else "copy"), "some files could not be transferred")
    problems.write_report(args.report)
    kept = f", {len(chosen)} selected" if _needs_all_rows(args) else ""
    print(f"cityclf: scored {len(rows)} image(s){kept}" + (f", {len(problems)} skipped" if problems else ""),
          file=sys.stderr)
    return 1 if len(problems) or not rows else 0


def _common_root(paths: list[str]) -> list[str]:
    if not paths:
        return []
    dirs = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return [os.path.commonpath(dirs)]


def _write_tags(args, rows) -> None:
    from .tags import TagRules, owner, write_sidecar

    rules = TagRules.from_text(args.tag_names, args.tag_thresholds, args.tag_bucket)
    owned = owner(rules, [r for _, r in rows[:1]])
    changed = 0
    for path, result in rows:
        tags = rules.tags_for(result)
        if args.dry_run:
            print(f"cityclf: would tag {path}: {', '.join(tags) or '(no tags)'}", file=sys.stderr)
            continue
        changed += write_sidecar(path, tags, owned)[1]
    if not args.dry_run:
        print(f"cityclf: tags: {changed} sidecar(s) updated, {len(rows) - changed} already up to date",
              file=sys.stderr)


def _score_with_store(args) -> int:
    from .jobs import score_store
    from .loading import load_stored_model
    from .store import EmbeddingStore

    problems = Problems()
    paths = None
    with EmbeddingStore(args.store, create=bool(args.paths)) as store:
        if args.paths:  # embed what is missing first, with the CLIPs loaded; score with that same model
            paths, model = _embed_into(args, store, problems)
        else:  # no CLIP needed: the heads are bound to the CLIPs recorded in the store
            model = load_stored_model(args.model, store, clip=args.clip, pairing=args.pairing,
                                      allow_download=not args.offline, models_dir=args.models_dir,
                                      tile_size=args.tile_size)
        stream = not _needs_all_rows(args)
        writer = ResultWriter(args.format, model.names, sys.stdout)
        rows = []
        for results, missing in score_store(store, model, paths, args.combine, args.tiling, args.upscale):
            for path, why in missing:
                problems.add(path, why)
            with store.transaction():
                store.put_scores(
                    (p, name, args.combine, r.score, r.label, json.dumps(r.probs) if r.probs else None)
                    for p, res in results for name, r in res.items())
            for path, result in results:
                if stream:
                    writer.write(path, result)
                rows.append((path, result))
        return _finish(args, rows, problems, roots=args.paths, writer=None if stream else writer, store=store)


def _embed_into(args, store, problems: Problems):
    """Embed args.paths into `store` for the heads' (CLIP, policy) pairs; returns (absolute paths, model or None)."""
    from .jobs import EmbedTarget, embed_files, embed_targets
    from .loading import load_encoder
    from .store import policy_key

    files, missing = find_images(args.paths)
    for path, reason in missing:
        problems.add(path, reason)
    if getattr(args, "shard", None):
        from .jobs import in_shard, parse_shard

        shard = parse_shard(args.shard)
        files = [f for f in files if in_shard(f, args.paths, shard)]
    paths = [os.path.abspath(p) for p in files]
    model = None
    if getattr(args, "model", None):
        model = _load_model(args)
        targets = embed_targets(model, store, args.tiling, args.upscale)
    else:
        encoder = load_encoder(args.clip, args.device, args.dtype, allow_download=not args.offline)
        policy = CropPolicy(tiling=args.tiling == "on", tile_size=args.tile_size,
                            upscale=args.upscale).resolved(encoder.image_size)
        row = store.register_encoder(encoder.identity, encoder.name, encoder.source, encoder.image_size,
                                     encoder.embed_dim)
        targets = [EmbedTarget(encoder, policy, policy_key(policy), row)]
    bar = ProgressBar(len(paths), "img", enabled=_progress_enabled(args), label="embedding")
    problems.bar = bar

    def on_file(path, error):
        if error:
            problems.add(path, error)
        bar.update(1)

    with bar:
        report = embed_files(store, targets, paths, batch_size=args.batch_size, workers=args.workers,
                             max_pixels=args.max_pixels, on_file=on_file)
    problems.bar = None
    for path, note in report.notes:
        print(f"cityclf: note {path}: {note}", file=sys.stderr)
    print(f"cityclf: {report.summary()}", file=sys.stderr)
    return paths, model


def cmd_embed(args) -> int:
    from .store import EmbeddingStore

    engine_status = _run_engine(args, "embed")
    if engine_status is not None:
        return engine_status
    if not args.model and not args.clip:
        raise ConfigError("name the heads (--model) whose CLIP and crops to embed for, or a --clip")
    problems = Problems()
    with EmbeddingStore(args.store) as store:
        _embed_into(args, store, problems)
    problems.write_report(args.report)
    return 1 if len(problems) else 0


def cmd_merge(args) -> int:
    from .jobs import merge_stores
    from .store import EmbeddingStore

    with EmbeddingStore(args.store) as store:
        added = merge_stores(store, args.sources)
    print(f"cityclf: merged {len(args.sources)} store(s) into {args.store}: " +
          ", ".join(f"{n} {what}" for what, n in added.items()), file=sys.stderr)
    return 0


# ---------------------------------------------------------------- stored scores


def _stored_rows(store, heads: list[str] | None, combine: str):
    from .pipeline import HeadResult

    rows = []
    for path, per_head in store.scores(heads, combine).items():
        results = {}
        for name, (score, label, probs) in per_head.items():
            if probs:
                results[name] = HeadResult(name, "class", list(probs), list(probs.values()), score, 0)
            else:
                results[name] = HeadResult(name, "score", ["score"], [score], score, 0)
        rows.append((path, results))
    return rows


def cmd_query(args) -> int:
    from .store import EmbeddingStore

    with EmbeddingStore(args.store, create=False) as store:
        rows = _stored_rows(store, args.head, args.combine)
        if not rows:
            raise ConfigError(f"store {args.store} has no scores{' for ' + ', '.join(args.head) if args.head else ''}"
                              "; run cityclf score --store ... --model ... first")
        names = list(rows[0][1])
        writer = ResultWriter(args.format, names, sys.stdout)
        return _finish(args, rows, Problems(), roots=None, writer=writer, store=store)


def cmd_grid(args) -> int:
    from .grid import contact_sheet, histograms
    from .jobs import Bound, select
    from .store import EmbeddingStore

    with EmbeddingStore(args.store, create=False) as store:
        rows = _stored_rows(store, args.head, args.combine)
    if not rows:
        raise ConfigError(f"store {args.store} has no scores; run cityclf score --store ... --model ... first")
    bounds = [Bound.parse(s, "min") for s in args.min] + [Bound.parse(s, "max") for s in args.max]
    top = args.top if (args.top or args.bottom) else (None if bounds else 24)
    chosen = select(rows, bounds, top, args.bottom, args.sort_by)
    if args.out:
        items = [(p, [_caption(name, r) for name, r in res.items()]) for p, res in chosen]
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


def _caption(name: str, r) -> str:
    short = name.split("-v")[0]
    return f"{short}: {r.score:.3f}" if r.is_score else f"{short}: {r.label} ({max(r.values):.2f})"


def cmd_export(args) -> int:
    from .loading import clip_identity, source_name
    from .store import EmbeddingStore

    with EmbeddingStore(args.store, create=False) as store:
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
        policies = sorted({r[0] for r in store.db.execute(
            "SELECT DISTINCT policy FROM embeddings WHERE encoder_id = ?", (row.id,))})
        policy = args.policy or (policies[0] if len(policies) == 1 else None)
        if policy not in policies:
            raise ConfigError(f"choose --policy among: {', '.join(policies)}")
        n = store.export_numpy(args.out, row, policy)
    print(f"cityclf: wrote {args.out}: {n} images, CLIP {row.source}, {policy}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from .loading import load_encoder
    from .store import EmbeddingStore
    from .train import (REFERENCE_CLIPS, data_kind, format_metrics, load_config, load_image_dataset,
                        load_npy_dataset, train)

    cfg = load_config(args.config, overrides={"device": args.device if args.device != "auto" else None})
    root, kind = data_kind(args.data, cfg.clip)
    out = Path(args.out)
    problems = Problems()
    if kind == "npy":
        print(f"cityclf: training on .npy embeddings in {root}", file=sys.stderr)
        data = load_npy_dataset(cfg, root)
    else:
        source = args.clip or cfg.clip_model or REFERENCE_CLIPS[cfg.clip]["clip_model"]
        if source is None:
            raise ConfigError(f"model.clip {cfg.clip} has no CLIP to embed images with here; give --clip, "
                              "set model.clip_model, or train from .npy embeddings")
        encoder = load_encoder(source, args.device, args.dtype, allow_download=not args.offline)
        store_path = Path(args.store) if args.store else out / f"{cfg.base}.embeddings.db"
        out.mkdir(parents=True, exist_ok=True)
        reports: list = []
        with EmbeddingStore(store_path) as store:
            n_files = sum(1 for _ in root.rglob("*") if _.is_file())
            bar = ProgressBar(n_files, "img", enabled=_progress_enabled(args), label="embedding")
            problems.bar = bar
            with bar:
                data = load_image_dataset(cfg, root, store, encoder, report=reports,
                                          on_file=lambda p, e: (problems.add(p, e) if e else None, bar.update(1)))
            problems.bar = None
        embedded = sum(r.embedded for r in reports)
        print(f"cityclf: embeddings in {store_path}: {embedded} image(s) embedded now, "
              f"{sum(r.reused for r in reports)} reused", file=sys.stderr)
    print(f"cityclf: {data.n_train} training and {len(data.val_counts)} validation images; "
          f"{cfg.optimizer_steps} optimizer steps of batch {cfg.batch}", file=sys.stderr)
    bar = ProgressBar(cfg.optimizer_steps, "step", enabled=_progress_enabled(args), label="training")
    with bar:
        result = train(cfg, data, out, resume=args.resume, overwrite=args.overwrite, log=bar.write,
                       progress=lambda step, total: bar.set(step))
    print(format_metrics(result.metrics))
    for what, path in (("weights", result.weights), ("config", result.config), ("log", result.log),
                       ("curves", result.curves), ("metrics", result.metrics_path)):
        print(f"cityclf: {what}: {path}", file=sys.stderr)
    problems.write_report(args.report)
    return 1 if len(problems) else 0


def cmd_review(args) -> int:
    from .grid import contact_sheet
    from .review import expected_from_folders, review_items

    if len(args.model) != 1:
        raise ConfigError("review one head at a time: give exactly one --model")
    model = _load_model(args)
    head = model.bindings[0].head
    if args.expect is not None:
        files, missing = find_images(args.paths)
        expected = {os.path.abspath(p): args.expect for p in files}
    else:
        if len(args.paths) != 1:
            raise ConfigError("give one labelled data folder (category folders like 0_reg, 1_jpeg), "
                              "or --expect CLASS for a folder of new images")
        expected, missing = expected_from_folders(args.paths[0], head), []
        files = [Path(p) for p in expected]
    bar = ProgressBar(len(files), "img", enabled=_progress_enabled(args), label="reviewing")
    problems = Problems(bar)
    for path, reason in missing:
        problems.add(path, reason)
    with bar:
        rows = [(os.path.abspath(p), r[model.names[0]]) for p, r in iter_scored(args, model, files, problems, bar)]
    items = review_items(rows, expected, head)[: args.top]
    if args.format == "jsonl":
        for it in items:
            print(json.dumps(it.to_dict(), ensure_ascii=False))
    else:
        w = csv.writer(sys.stdout, delimiter="," if args.format == "csv" else "\t", lineterminator="\n")
        w.writerow(["path", "expected", "predicted", "confidence", "p_expected", "loss", "kind"])
        for it in items:
            w.writerow([it.path, it.expected, it.predicted, f"{it.confidence:.3f}", f"{it.p_expected:.3f}",
                        f"{it.loss:.4f}", it.kind])
    if args.sheet and items:
        sheet = contact_sheet([(it.path, [f"expected {it.expected}", f"got {it.predicted} ({it.confidence:.2f})"])
                               for it in items], args.sheet, thumb=args.thumb,
                              title=f"{head.name}: most confidently wrong first")
        print(f"cityclf: wrote {sheet}", file=sys.stderr)
    print(f"cityclf: {len(rows)} image(s) reviewed, {len(items)} listed", file=sys.stderr)
    return 1 if len(problems) else 0


def cmd_synth(args) -> int:
    from .synth import synthesize

    def span(text: str, what: str) -> tuple[int, int]:
        try:
            lo, _, hi = text.partition("-")
            return int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(f"--{what} takes a range like 10-60") from None

    if args.generate:
        from .samples import make_clean_images

        make_clean_images(args.clean, args.generate, seed=args.seed)
        print(f"cityclf: {args.generate} generated clean picture(s) in {args.clean}", file=sys.stderr)
    report = synthesize(args.clean, args.out, task=args.task, per_image=args.per_image, seed=args.seed,
                        quality=span(args.quality, "quality"), shift=span(args.shift, "shift"))
    for path, why in report.skipped:
        print(f"cityclf: skipped {path}: {why}", file=sys.stderr)
    written = ", ".join(f"{n} in {folder}" for folder, n in sorted(report.written.items())) or "nothing new"
    print(f"cityclf: wrote {written}" + (f"; {report.existing} already there" if report.existing else "") +
          f"; a starting config is {Path(args.out) / 'config.yaml'}", file=sys.stderr)
    return 1 if report.skipped else 0


def cmd_store_info(args) -> int:
    from .store import EmbeddingStore

    with EmbeddingStore(args.store, create=False) as store:
        print(json.dumps(store.stats(), indent=2))
    return 0


def cmd_models(args) -> int:
    from .catalogue import RELEASES, default_models_dir

    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    for r in RELEASES:
        local = models_dir / r.filename
        labels = ", ".join(r.config.label_names) if r.arch == "class" else "score 0..1"
        print(f"{r.name}\n  {r.arch}: {labels}\n  CLIP: {r.pairing.clip.repo_id}, {r.pairing.policy.describe()}"
              f" ({r.pairing.why})")
        if r.alternative:
            print(f"  alternative: {r.alternative.clip.repo_id}, {r.alternative.policy.describe()} ({r.alternative.why})")
        print(f"  {'on disk: ' + str(local) if local.is_file() else 'download: ' + r.url}\n  sha256 {r.sha256}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.dir), progress=_progress_enabled(args))


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityclf",
        description="Score and classify anime images with CityClassifiers heads on CLIP embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"cityclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="score image files and folders (walked recursively), or a store",
                       description="Score images with one or more heads. Folders are walked recursively. With "
                                   "--store, embeddings are kept (and reused), and with --store alone the stored "
                                   "embeddings are scored without loading CLIP.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    _add_model_options(p)
    _add_crop_options(p)
    p.add_argument("--store", metavar="DB", help="an embedding store (SQLite file): embed into it, score from it")
    _add_selection_options(p)
    _add_output_options(p)
    _add_engine_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("embed", help="compute CLIP embeddings into a store (resumable)",
                       description="Embed images into a store, for each CLIP and crop policy the heads need; "
                                   "unchanged files are skipped, so a killed run continues where it stopped.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--store", required=True, metavar="DB", help="the store file (created if missing)")
    _add_model_options(p, required=False)
    _add_crop_options(p)
    p.add_argument("--shard", metavar="K/N", help="embed only shard K of N (0-based): a stable split by path, for "
                                                  "running one job per machine into separate stores; see merge")
    p.add_argument("--report", metavar="FILE", help="write skipped files and why, as JSONL")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_engine_options(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("merge", help="merge stores (e.g. one per shard) into one")
    p.add_argument("sources", nargs="+", metavar="DB", help="stores to merge in")
    p.add_argument("--store", required=True, metavar="DB", help="the store to merge into (created if missing)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("query", help="select and act on stored scores (no models needed)")
    p.add_argument("--store", required=True, metavar="DB")
    p.add_argument("--head", action="append", metavar="NAME", help="only these heads' scores (default: all)")
    p.add_argument("--combine", choices=COMBINES, default="mean", help="the tile combine the scores were made with")
    _add_selection_options(p)
    _add_output_options(p)
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

    p = sub.add_parser("train", help="train a head from folders of images (or .npy embeddings)",
                       description="Train a head with a reference-format config (YAML) on data in the reference "
                                   "layout: one folder per category, named by its label (0_reg, 1_chroma) or score "
                                   "(0..10). Images are embedded once, through an embedding store.")
    p.add_argument("--config", required=True, metavar="YAML")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--out", default="models", metavar="DIR", help="where the head and its logs go (default: models)")
    p.add_argument("--store", metavar="DB", help="embedding store (default: OUT/<base>.embeddings.db)")
    p.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                   help="continue an interrupted run (default: OUT/<name>.checkpoint.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing head of the same name and rev")
    p.add_argument("--clip", metavar="ID_OR_DIR", help="the CLIP to embed images with (default: model.clip_model, "
                                                       "else openai/clip-vit-large-patch14-336)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--offline", action="store_true")
    p.add_argument("--report", metavar="FILE", help="write skipped images and why, as JSONL")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("review", help="list the most confidently wrong images of a labelled folder (or a new one)",
                       description="Score a labelled dataset (category folders) with a head and list the images "
                                   "it gets most confidently wrong, highest loss first: candidates to move to the "
                                   "right folder before retraining. For a folder of new images, say what they "
                                   "should be with --expect.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    _add_model_options(p)
    _add_crop_options(p)
    p.add_argument("--expect", metavar="CLASS", help="what every image in PATH should be (a class name or number)")
    p.add_argument("--top", type=int, default=50, metavar="N", help="list at most N (default 50)")
    p.add_argument("--sheet", metavar="PNG", help="also write a contact sheet of them")
    p.add_argument("--thumb", type=int, default=200, metavar="PX")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("synth", help="make training images with compression or chromatic aberration from clean ones")
    p.add_argument("clean", metavar="CLEAN_DIR")
    p.add_argument("--out", required=True, metavar="DATA_DIR")
    p.add_argument("--task", choices=("compression", "chromatic-aberration"), default="compression")
    p.add_argument("--per-image", type=int, default=1, metavar="N", help="variants per class per clean image")
    p.add_argument("--quality", default="10-60", metavar="LO-HI", help="JPEG/WEBP quality range (default 10-60)")
    p.add_argument("--shift", default="1-5", metavar="LO-HI", help="red/blue shift in pixels (default 1-5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generate", type=int, metavar="N",
                   help="first draw N clean sample pictures into CLEAN_DIR (for trying it out without a dataset)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("store-info", help="what a store holds")
    p.add_argument("--store", required=True, metavar="DB")
    p.set_defaults(func=cmd_store_info)

    p = sub.add_parser("models", help="list the known releases, their CLIP pairings and local copies")
    p.add_argument("--models-dir", metavar="DIR")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", help="build tiny models and sample images, then score them (offline)")
    p.add_argument("--dir", default="cityclf-demo", help="where to put the demo's models and images "
                                                        "(default: ./cityclf-demo)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        return args.func(args)
    except CityClfError as e:
        print(f"cityclf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncityclf: interrupted" + (" (the store keeps everything finished; rerun to continue)"
                                          if getattr(args, "store", None) else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `cityclf score ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
