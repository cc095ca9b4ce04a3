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
is reported on stderr, the rest are still processed), 2 for a usage, model or
store error, 3 for an internal error (a bug: `--debug` shows its traceback),
130 when interrupted (a store keeps everything finished: rerun to go on).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .. import __version__
from ..errors import CityClfError
from . import curate, info, pixiv, scoring, stored, training

#: each group of subcommands registers its own parsers
GROUPS = (scoring, stored, curate, training, info, pixiv)

#: exit statuses
OK, SKIPPED, USAGE, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 130

DEBUG_HELP = "on an internal error, print its traceback (for a bug report)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityclf",
        description="Score and classify anime images with CityClassifiers heads on CLIP embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"cityclf {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in GROUPS:
        group.register(sub)
    for command in sub.choices.values():  # `cityclf score ... --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def check_option_names(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """An unknown --option is named as such, with the nearest real one (argparse would report a misspelt
    required option, e.g. --modle, as the missing --model)."""
    import difflib

    sub, names = parser, []
    for word in (t for t in argv if not t.startswith("-")):  # the (sub)subcommand that parses argv
        choices = next((a.choices for a in sub._actions if isinstance(a, argparse._SubParsersAction)), None)
        if not choices or word not in choices:
            break
        sub = choices[word]
        names.append(word)
    if sub is parser:
        return
    command = " ".join(names)
    known = [o for o in sub._option_string_actions if o.startswith("--")]
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        if name in known or sum(o.startswith(name) for o in known) == 1:  # exact, or argparse's abbreviation
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        sub.error(f"unknown option {name}" + (f"; did you mean {near[0]}?" if near else
                                               f"; see cityclf {command} --help"))


def main(argv: list[str] | None = None) -> int:
    from ..notices import to_stderr

    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 never stops output
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    to_stderr()
    parser = build_parser()
    check_option_names(parser, sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        return args.func(args)
    except CityClfError as e:
        print(f"cityclf: error: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("\ncityclf: interrupted" + (" (the store keeps everything finished; rerun to continue)"
                                          if getattr(args, "store", None) else ""), file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # e.g. `cityclf score ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except Exception as e:  # noqa: BLE001  (anything else is a bug of ours: say so, distinctly)
        if args.debug:
            traceback.print_exc()
        print(f"cityclf: internal error: {type(e).__name__}: {e}\n"
              "cityclf: this is a bug in cityclf, not in your files or options. "
              + ("Please report it with the traceback above." if args.debug else
                 "Run the same command with --debug to see the traceback, and please report it."),
              file=sys.stderr)
        return INTERNAL


if __name__ == "__main__":
    sys.exit(main())
