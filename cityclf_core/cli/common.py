"""What the subcommands share: option groups, result writers, the list of skipped inputs, the final report."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys

from ..errors import ConfigError
from ..defaults import COMBINES, DEFAULT_MAX_PIXELS
from ..numbers import COUNT, PIXELS
from ..pathtext import raw_b64, safe_text, shown, shown_here
from ..progress import ProgressBar

FORMATS = ("table", "jsonl", "csv")


def checked(parse):
    """An argparse `type=` that checks a text option with `parse` (a library parser) and keeps the text:
    a bad --min, --max or --tag-thresholds is refused before any work, naming the option."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    return check


def bound_spec(kind: str):
    from ..dataset.select import Bound

    return checked(lambda text: Bound.parse(text, kind))


def threshold_spec(text: str) -> str:
    from ..tags import parse_thresholds

    return checked(parse_thresholds)(text)


def top_count(text: str):
    """argparse type for --top/--bottom: N images, or a share such as 20%."""
    from ..dataset.percentiles import parse_top

    try:
        return parse_top(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


TOP_HELP = ("keep the N highest by --sort-by (N, or a share such as 20%%). For a score head that is the best "
            "images; for a classifier its "
            "score is the probability of a non-pass class, so --top gives the most affected (worst) images: use "
            "--bottom N for the cleanest, or --sort-by HEAD:CLASS for one class")


# ---------------------------------------------------------------- output


class ResultWriter:
    """Writes per-image results as they come, in one of FORMATS."""

    def __init__(self, fmt: str, heads: list[str], stream, stored: bool = False):
        """stored: the paths come from a store (absolute): printed relative to the current folder inside it."""
        self.fmt, self.heads, self.stream = fmt, heads, stream
        self.show = shown_here if stored else shown
        self._csv_writer = None
        self._header_done = False
        self._widths: list[int] = []  # a terminal gets padded columns; a pipe or file gets TSV
        self._pad = bool(getattr(stream, "isatty", lambda: False)())

    def write(self, path: str, results: dict) -> None:
        getattr(self, f"_{self.fmt}")(path, results)
        self.stream.flush()

    def _jsonl(self, path: str, results: dict) -> None:
        for name, r in results.items():
            row = {"path": self.show(path), "model": name, **r.kind.jsonl_fields(r)}
            if raw_b64(path):  # a name that is not UTF-8: its exact bytes too
                row["path_b64"] = raw_b64(path)
            self.stream.write(json.dumps(finite_json(row), ensure_ascii=False, allow_nan=False) + "\n")

    def _csv(self, path: str, results: dict) -> None:
        if self._csv_writer is None:
            self._csv_writer = csv.writer(self.stream, lineterminator="\n")
        if not self._header_done:
            header = ["path"]
            for name, r in results.items():
                header += r.kind.csv_columns(name, r.labels)
            self._csv_writer.writerow(header)
            self._header_done = True
        row = [self.show(path)]
        for r in results.values():
            row += r.kind.csv_cells(r)
        self._csv_writer.writerow(row)

    def _table(self, path: str, results: dict) -> None:
        if not self._header_done:
            self._line(["path", *results])
            self._header_done = True
        cells = [self.show(path)]
        for r in results.values():
            cells.append(r.kind.short_text(r))
        self._line(cells)

    def _line(self, cells: list[str]) -> None:
        if not self._pad:
            self.stream.write("\t".join(cells) + "\n")
            return
        # columns as wide as the widest cell so far (streamed rows cannot wait for the last one)
        self._widths = [max(w, len(c)) for w, c in zip(self._widths + [0] * len(cells), cells)]
        self.stream.write("  ".join(c.ljust(w) for c, w in zip(cells, self._widths)).rstrip() + "\n")


def finite_json(value):
    """`value` with any NaN or infinity as null: the stages report such images, this keeps JSON valid regardless."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


class Problems:
    """Skipped inputs: reported on stderr as they happen, optionally written to --report."""

    def __init__(self, bar: ProgressBar | None = None):
        self.items: list[tuple[str, str]] = []
        self.bar = bar

    def add(self, path, reason: str) -> None:
        self.items.append((str(path), reason))
        line = f"cityclf: skipped {shown_here(str(path))}: {safe_text(reason)}"
        (self.bar.write(line) if self.bar else print(line, file=sys.stderr))

    def write_report(self, path: str | None) -> None:
        if path:
            try:
                self._write_report(path)
            except OSError as e:
                raise ConfigError(f"--report {path}: cannot write it ({e.strerror or e}); the skipped files were "
                                  "listed above") from None

    def _write_report(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for p, why in self.items:
                row = {"path": shown(p), "error": safe_text(why)}
                if raw_b64(p):
                    row["path_b64"] = raw_b64(p)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------- options


def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--model", "-m", action="append", required=required, metavar="NAME_OR_FILE",
                   help="a head: a .safetensors file, or a release name such as CCAnime-Compression-v1.5 "
                        "(downloaded into --models-dir if missing). Repeat for several heads.")
    g.add_argument("--clip", metavar="ID_OR_DIR",
                   help="run every head on this CLIP (a transformers folder, its name in a --clip-dir, or a hub id); "
                        "default: the CLIP a trained head records, else each release's own CLIP pairing, else "
                        "openai/clip-vit-large-patch14-336")
    g.add_argument("--clip-dir", action="append", default=[], metavar="DIR",
                   help="a folder of CLIP folders, searched for a CLIP named by its folder's name and for the CLIP "
                        "a trained head records (also $CITYCLF_CLIP_DIRS; repeat for several)")
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


def add_crop_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("crops")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--tiling", dest="tiling", action="store_const", const="on", default="auto",
                   help="five-crop tiling for every head (default: per head; classifiers tile, score models don't)")
    t.add_argument("--no-tiling", dest="tiling", action="store_const", const="off",
                   help="whole image for every head")
    g.add_argument("--no-upscale", dest="upscale", action="store_false",
                   help="never enlarge an image before tiling (the reference enlarges e.g. 1000x2000 to 1536x3072)")
    g.add_argument("--tile-size", type=PIXELS, metavar="PX", help="tile size in pixels (default: 2x the CLIP input size, "
                                                               "or the release's pairing)")
    g.add_argument("--combine", choices=COMBINES, default="mean", help="how tiles are combined per class (default: mean)")
    g.add_argument("--batch-size", type=COUNT, metavar="N", help="views per CLIP forward (default: 4 on CPU, 64 on GPU)")
    g.add_argument("--workers", type=COUNT, default=2, metavar="N", help="image decoding threads (default: 2)")
    g.add_argument("--max-pixels", type=PIXELS, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"skip images with more pixels (decompression-bomb guard; default {DEFAULT_MAX_PIXELS:,})")


def add_selection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("selecting and acting on images")
    add_choice_options(g)
    add_action_options(g)


def add_choice_options(g) -> None:
    """--min/--max/--reference/--top/--bottom/--sort-by: which stored or scored images a command takes."""
    g.add_argument("--min", action="append", default=[], metavar="SPEC", type=bound_spec("min"),
                   help="keep images scoring at least this: 0.6 (the first head), HEAD=0.6, or HEAD:CLASS=0.6 "
                        "(a class probability); HEAD=p80: at least the 80th percentile of HEAD's scores in the "
                        "store (or --reference). Repeat to combine (all must hold).")
    g.add_argument("--max", action="append", default=[], metavar="SPEC", type=bound_spec("max"),
                   help="keep images scoring at most this (a value or a percentile, as --min)")
    g.add_argument("--reference", metavar="DB_OR_JSON",
                   help="where HEAD=pNN percentiles are taken from: another store, or a reference file from "
                        "cityclf percentiles (default: this store; without a store, the images scored)")
    g.add_argument("--top", type=top_count, metavar="N", help=TOP_HELP)
    g.add_argument("--bottom", type=top_count, metavar="N",
                   help="keep the N (or a share, e.g. 10%%) lowest by --sort-by (a classifier: the cleanest images)")
    g.add_argument("--sort-by", metavar="HEAD[:CLASS]", help="the head (or class) --top/--bottom use (default: first)")


def add_action_options(g) -> None:
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
    g.add_argument("--write-metadata", action="store_true",
                   help="write each kept image's scores into the image file (PNG text chunks, JPEG/WebP XMP) "
                        "without re-encoding it: our earlier scores are replaced, other metadata is kept")
    g.add_argument("--touch", action="store_true",
                   help="with --write-metadata: give rewritten files the current time (default: keep their mtime)")
    g.add_argument("--tag-thresholds", default="0.5", metavar="T", type=threshold_spec,
                   help="class probability for a tag: 0.5, or per head 'HEAD = 0.6; * = 0.5'")
    g.add_argument("--tag-bucket", choices=("none", "decile", "percent"), default="decile",
                   help="score heads add a bucket tag: aesthetic_70 (decile, default) or aesthetic_72 (percent)")
    g.add_argument("--tag-names", default="", metavar="MAP",
                   help="rename tags: 'CCAnime-Compression:JPEG = jpeg; CityAesthetics = aes'")


def output_file(text: str) -> str:
    """An argparse type for a file a command will write: checked when the options are read, before any work.
    Its folder is made if missing, and a file must be creatable there; else the option is refused (exit 2)."""
    from ..confined import NAME_MAX

    path = os.path.abspath(os.path.expanduser(text))
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} contains a NUL byte; give a file name")
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name in it")
    if len(os.fsencode(os.path.basename(path))) > NAME_MAX:
        raise argparse.ArgumentTypeError(f"{text}: the file name is longer than {NAME_MAX} bytes; give a shorter one")
    _writable_folder(text, os.path.dirname(path), os.path.basename(path))
    return text


def output_folder(text: str) -> str:
    """An argparse type for a folder a command will write into: checked when the options are read, before any
    work. It is made if missing, and a file must be creatable in it; else the option is refused (exit 2)."""
    path = os.path.abspath(os.path.expanduser(text))
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} contains a NUL byte; give a folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; give a folder (it is made if missing)")
    _writable_folder(text, path, "cityclf")
    return text


def _writable_folder(text: str, folder: str, name: str) -> None:
    """Make `folder` if missing and create (then remove) a temporary for `name` in it; an ArgumentTypeError
    naming the option's value `text` when either fails."""
    from ..confined import temp_name
    from ..errors import file_system_error

    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, temp_name(name, ".cityclf-tmp"))
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except FileExistsError:  # from makedirs: a file stands where a folder should be
        raise argparse.ArgumentTypeError(f"{text}: a part of {folder} is a file, not a folder") from None
    except OSError as e:
        why = file_system_error(e)
        raise argparse.ArgumentTypeError(f"{text}: no file can be written there ({why or e.strerror or e})") from None


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default), jsonl (one object per image and head), or csv (one row per image)")
    p.add_argument("--report", metavar="FILE", type=output_file, help="write skipped inputs and why, as JSONL")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def progress_enabled(args) -> bool | None:
    return False if getattr(args, "no_progress", False) else None


def model_spec(args, score: bool = False):
    """The heads and CLIP the options name, for an embedding job (dataset.passes.ModelSpec)."""
    from ..dataset.passes import ModelSpec

    return ModelSpec(tuple(args.model or ()), args.clip, args.pairing, args.models_dir, not args.offline,
                     args.tile_size, args.dtype, args.tiling, args.upscale, getattr(args, "combine", "mean"),
                     score=score)


def say_loading(what: str, args) -> None:
    """One line on stderr before the slow part (importing torch and transformers, reading weights): a command
    that will take seconds says so at once."""
    where = ", ".join(v for v in (getattr(args, "dtype", None), getattr(args, "device", None)) if v and v != "auto")
    print(f"cityclf: loading {what}" + (f" ({where})" if where else "") + " ...", file=sys.stderr, flush=True)


def loading_what(args) -> str:
    """What a command loads, in words: its heads and their CLIP, or a bare CLIP."""
    if not getattr(args, "model", None):
        return f"CLIP {args.clip}"
    names = ", ".join(os.path.basename(m) for m in args.model)
    return f"{names} and " + (f"CLIP {args.clip}" if args.clip else "the CLIP each was made with")


def load_model(args):
    say_loading(loading_what(args), args)
    from ..loading.models import load_scoring_model

    return load_scoring_model(
        args.model, clip=args.clip, device=args.device, dtype=args.dtype, pairing=args.pairing,
        allow_download=not args.offline, models_dir=args.models_dir, tile_size=args.tile_size,
        clip_dirs=args.clip_dir,
    )


@contextlib.contextmanager
def file_progress(args, problems: "Problems", total: int, label: str = "embedding"):
    """A progress bar over `total` files; yields on_file(path, error): a skipped file is reported, each counted."""
    bar = ProgressBar(total, "img", enabled=progress_enabled(args), label=label)
    problems.bar = bar

    def on_file(path, error):
        if error:
            problems.add(path, error)
        bar.update(1)

    try:
        with bar:
            yield on_file
    finally:
        problems.bar = None


def listed_files(inputs, problems: "Problems", shard: str | None = None) -> list[str]:
    """The image files under `inputs` (shard K/N of them), as absolute paths; what can't be listed is reported."""
    import os

    from ..dataset import in_shard, parse_shard
    from ..scoring.images import find_images

    files, missing = find_images(inputs)
    for path, reason in missing:
        problems.add(path, reason)
    if shard:
        part = parse_shard(shard)
        files = [f for f in files if in_shard(f, inputs, part)]
    return [os.path.abspath(p) for p in files]


def score_options(args):
    from ..dataset import ScoreOptions

    return ScoreOptions(tiling=args.tiling, combine=args.combine, upscale=args.upscale, batch_size=args.batch_size,
                        workers=args.workers, max_pixels=args.max_pixels)


def selection(args):
    from ..dataset import Selection

    return Selection.parse(args.min, args.max, args.top, args.bottom, args.sort_by)


def resolved_selection(args, heads, distribution, total: int | None = None):
    """selection(args) with HEAD=pNN bounds looked up in --reference, else in `distribution()` (the store, or the
    scored rows), and a --top share counted from `total` (None: from the rows selected from)."""
    from ..dataset.percentiles import needs_resolving, open_reference, resolve

    chosen = selection(args)
    if not needs_resolving(chosen):
        return chosen
    reference = getattr(args, "reference", None)
    source = open_reference(reference, args.combine, lambda p: open_store(p, write=False)) if reference \
        else distribution()
    return resolve(chosen, heads, source, total)


# ---------------------------------------------------------------- the end of score and query


def finish(args, rows, problems: Problems, roots, writer=None, store=None, verb: str = "scored", model=None) -> int:
    """Select, print (unless already streamed), act (copy/move/tags), report; the exit status."""
    from ..dataset.percentiles import rows_distribution, store_distribution

    if store is not None:
        rows = present(rows, problems, store.path)
    heads = model.names if model is not None else list(rows[0][1]) if rows else []
    chosen = resolved_selection(args, heads, lambda: store_distribution(store, args.combine) if store is not None
                                else rows_distribution(rows)).apply(rows)
    if writer is not None:
        for path, result in chosen:
            writer.write(path, result)
    return act_and_report(args, chosen, len(rows), problems, roots, store, verb, scored=rows, model=model)


def acting(args) -> bool:
    """Whether the selected rows are acted on (so they must be kept, not only printed)."""
    return bool(args.write_tags or args.write_metadata or args.copy or args.move)


def act_and_report(args, chosen, total: int, problems: Problems, roots, store=None, verb: str = "scored",
                   scored=None, model=None) -> int:
    """Act on the chosen rows (tags, metadata, copy/move), write the report, say what happened; the exit status.
    `model`: the heads that scored the rows (their files' hashes and CLIP go into written metadata)."""
    from ..dataset import TransferRequest, transfer
    from ..tags import TagRules

    counted_only = isinstance(chosen, int)  # streamed and counted: nothing to act on
    if not counted_only and args.write_tags:
        write_tags(chosen, TagRules.from_text(args.tag_names, args.tag_thresholds, args.tag_bucket), args.dry_run,
                   problems)
    if not counted_only and args.write_metadata:
        write_metadata(chosen, model, store, args, problems)
    if not counted_only and (args.copy or args.move):
        request = TransferRequest(args.copy or args.move, move=bool(args.move), on_conflict=args.on_conflict,
                                  dry_run=args.dry_run)
        plan = transfer(chosen, scored if scored is not None else chosen, roots, request, store)
        report_transfers(plan, args.dry_run, problems, request.verb)
    problems.write_report(args.report)
    skipped = f", {len(problems)} skipped" if problems else ""
    n_chosen = chosen if counted_only else len(chosen)
    if verb == "selected":  # query: nothing was scored, stored scores were selected
        print(f"cityclf: selected {n_chosen} of {total} image(s){skipped}", file=sys.stderr)
    else:
        kept = f", {n_chosen} selected" if selection(args).active else ""
        print(f"cityclf: scored {total} image(s){kept}{skipped}", file=sys.stderr)
    return 1 if len(problems) or not total else 0


def present(rows, problems: Problems, store_path) -> list:
    """The rows whose files still exist; the others are reported as skipped (the store still names them)."""
    import os

    from ..dataset.stored_select import GONE

    kept = []
    for row in rows:
        if os.path.exists(row[0]):
            kept.append(row)
        else:
            problems.add(row[0], GONE.replace("--store DB", f"--store {store_path}"))
    return kept


def report_transfers(plan, dry_run: bool, problems: Problems, verb: str) -> None:
    from ..dataset.transfer import ALREADY_THERE

    for t in plan:
        if t.error:
            print(f"cityclf: {t.action if t.action == 'skip' else 'failed to ' + t.action} {shown(t.source)}: "
                  f"{safe_text(t.error)}", file=sys.stderr)
        elif t.action == ALREADY_THERE:
            print(f"cityclf: already there: {shown(t.source)}" +
                  (f" = {shown(t.target)}" if t.target != t.source else ""), file=sys.stderr)
        else:
            print(f"cityclf: {'would ' if dry_run else ''}{t.action} {shown(t.source)} -> {shown(t.target)}"
                  + "".join(f" (with {shown(os.path.basename(s))})" for s, _ in t.sidecars), file=sys.stderr)
        for note in t.notes:
            print(f"cityclf: note: {safe_text(note)}", file=sys.stderr)
    if any(t.error and t.action != "skip" for t in plan):
        problems.add("--" + verb, "some files could not be transferred")


def open_store(path, write: bool = True, create: bool = False):
    """The store at `path`; a command that only reads it (`write` False) also reads one it cannot write."""
    from ..store import EmbeddingStore, ReadOnlyStore

    if write:
        return EmbeddingStore(path, create=create)
    try:
        return EmbeddingStore(path, create=False)
    except ReadOnlyStore:
        return EmbeddingStore(path, create=False, readonly=True)


def finish_interrupted_moves(store, problems: Problems, dry_run: bool = False, locked: bool = True) -> None:
    """Complete a move that a killed run left unfinished (the store's journal says which files). A command that
    does not hold the store's lock (`locked` False: it only reads the store) takes it for this step alone, and
    only when there is a move to finish, so readers never wait otherwise."""
    from ..dataset import finish_interrupted_moves as finish_moves
    from ..store.lock import store_writer

    if store.readonly or dry_run:
        pending = store.pending_moves()
        if pending:
            why = "this is a dry run" if dry_run else "the store is read-only here"
            how = "run the command without --dry-run" if dry_run else "make the store writable and run any query"
            print(f"cityclf: note: an interrupted move of {len(pending)} file(s) is unfinished in {store.path} "
                  f"and {why}, so some paths may be stale; {how} to finish it.", file=sys.stderr)
        return
    if not locked:
        if store.pending_moves():  # a writer's step: it waits for (or is refused by) another writer, as they do
            with store_writer(store.path):
                finish_interrupted_moves(store, problems)
        return
    done, failed = finish_moves(store)
    if done:
        print(f"cityclf: finished an interrupted move: {done} file(s) now in place", file=sys.stderr)
    for path, why in failed:
        problems.add(path, why)


def write_metadata(rows, model, store, args, problems: Problems) -> None:
    from ..dataset.metadata import write_metadata as write_rows
    from ..image_metadata import provenance_of

    outcome = write_rows(rows, provenance_of(model) if model is not None else None, store, touch=args.touch,
                         dry_run=args.dry_run)
    for path, why in outcome.skipped:
        problems.add(path, f"metadata not written: {why}")
    if args.dry_run:
        for path in outcome.changed:
            print(f"cityclf: would write scores into {shown(path)}", file=sys.stderr)
    print(f"cityclf: {outcome.summary(args.dry_run)}", file=sys.stderr)


def write_tags(rows, rules, dry_run: bool, problems: Problems) -> None:
    from ..dataset import write_tags as tag_rows

    outcome = tag_rows(rows, rules, dry_run)
    for path, why in outcome.skipped:
        problems.add(path, f"tags not written: {why}")
    if dry_run:
        for path, tags in outcome.planned:
            print(f"cityclf: would tag {shown(path)}: {', '.join(tags) or '(no tags)'}", file=sys.stderr)
    else:
        unchanged = len(rows) - outcome.changed - len(outcome.skipped)
        print(f"cityclf: tags: {outcome.changed} sidecar(s) updated, {unchanged} already up to date",
              file=sys.stderr)
