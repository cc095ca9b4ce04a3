"""The `cityclf` command.

    cityclf score PATH... --model NAME_OR_FILE [--model ...] [--clip ID_OR_DIR]
                  [--tiling | --no-tiling] [--combine mean|median|max|min] [--format table|jsonl|csv]
    cityclf models          the known releases and their CLIP pairings
    cityclf demo            build tiny models and sample images, then score them (no internet needed)

Exit status: 0 when every input was scored, 1 when any input failed (each is
reported on stderr, and the rest are still scored), 2 for a usage or model error,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from . import __version__
from .crops import COMBINES
from .errors import CityClfError, ImageError
from .images import DEFAULT_MAX_PIXELS, find_images, iter_decoded
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
            self.stream.write("\t".join(["path", *self.heads]) + "\n")
            self._header_done = True
        cells = [path]
        for r in results.values():
            cells.append(f"{r.score:.3f}" if r.is_score else f"{r.label} ({max(r.values):.2f})")
        self.stream.write("\t".join(cells) + "\n")


# ---------------------------------------------------------------- commands


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--model", "-m", action="append", required=True, metavar="NAME_OR_FILE",
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


def _progress_enabled(args) -> bool | None:
    return False if args.no_progress else None


def cmd_score(args) -> int:
    from .loading import load_scoring_model

    files, problems = find_images(args.paths)
    failed = 0
    for path, reason in problems:
        print(f"cityclf: {path}: {reason}", file=sys.stderr)
        failed += 1
    model = load_scoring_model(
        args.model, clip=args.clip, device=args.device, dtype=args.dtype, pairing=args.pairing,
        allow_download=not args.offline, models_dir=args.models_dir, tile_size=args.tile_size,
    )
    writer = ResultWriter(args.format, model.names, sys.stdout)
    bar = ProgressBar(len(files), "img", enabled=_progress_enabled(args), label="scoring")
    block: list = []
    block_size = max(1, (args.batch_size or 8) // 2)
    scored = 0

    def flush() -> None:
        nonlocal failed, scored
        if not block:
            return
        base = bar.done
        pixels = [d.pixels for _, d in block]
        names = [str(p) for p, _ in block]
        try:
            results = model.score(pixels, tiling=args.tiling, combine=args.combine, upscale=args.upscale,
                                  batch_size=args.batch_size, names=names,
                                  on_progress=lambda d, t: bar.set(base + len(block) * d / max(t, 1)))
            pairs = list(zip(names, results))
        except ImageError:  # find the culprit, score the rest
            pairs = []
            for name, px in zip(names, pixels):
                try:
                    pairs.append((name, model.score([px], tiling=args.tiling, combine=args.combine,
                                                    upscale=args.upscale, batch_size=args.batch_size,
                                                    names=[name])[0]))
                except ImageError as e:
                    bar.write(f"cityclf: skipped {name}: {e}")
                    failed += 1
        for name, result in pairs:
            writer.write(name, result)
            scored += 1
        bar.set(base + len(block))
        block.clear()

    with bar:
        for path, decoded, error in iter_decoded(files, workers=args.workers, max_pixels=args.max_pixels):
            if error:
                bar.write(f"cityclf: skipped {error}")
                bar.update(1)
                failed += 1
                continue
            block.append((path, decoded))
            if len(block) >= block_size:
                flush()
        flush()
    print(f"cityclf: scored {scored} image(s)" + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return 1 if failed or not scored else 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityclf",
        description="Score and classify anime images with CityClassifiers heads on CLIP embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"cityclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="score image files and folders (walked recursively)",
                       description="Score images with one or more heads. Folders are walked recursively.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    _add_model_options(p)
    _add_crop_options(p)
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default), jsonl (one object per image and head), or csv (one row per image)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_score)

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
        print("\ncityclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `cityclf score ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
