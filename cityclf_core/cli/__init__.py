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
import os
import sys

from .. import __version__
from ..errors import CityClfError
from . import info, scoring, stored, training

#: each group of subcommands registers its own parsers
GROUPS = (scoring, stored, training, info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityclf",
        description="Score and classify anime images with CityClassifiers heads on CLIP embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"cityclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..notices import to_stderr

    to_stderr()
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
