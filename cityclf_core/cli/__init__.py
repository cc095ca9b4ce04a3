"""The `cityclf` command.

    cityclf score PATH... --model NAME_OR_FILE [--model ...] [--clip ID_OR_DIR]
                  [--tiling | --no-tiling] [--combine mean|median|max|min] [--format table|jsonl|csv]
                  [--store DB] [--min SPEC] [--max SPEC] [--top N|P%] [--copy TO | --move TO] [--write-tags]
                  [--write-metadata [--touch]] [--reference DB_OR_JSON]   (SPEC: VALUE, HEAD=VALUE, HEAD=p80)
    cityclf score --store DB --model ...        score stored embeddings, no CLIP loaded
    cityclf embed PATH... --store DB --model ...  compute and keep embeddings (resumable)
    cityclf query --store DB [--min ...] [--top N] [--copy TO] ...   stored scores, no models
    cityclf percentiles --store DB --out ref.json   each head's score percentiles, a reference for HEAD=p80
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
import re
import sys
import traceback
from pathlib import Path

from .. import __version__
from ..errors import CityClfError, file_system_error
from . import completion, curate, info, pixiv, scoring, stored, training

#: each group of subcommands registers its own parsers
GROUPS = (scoring, stored, curate, training, info, pixiv, completion)

#: exit statuses (a command itself returns 1 when it skipped some of its inputs)
OK, USAGE, INTERNAL, INTERRUPTED = 0, 2, 3, 130

DEBUG_HELP = "on an internal error, print its traceback (for a bug report)"
QUIET_HELP = "print only results, warnings, errors and skipped inputs (no progress, no notes)"
VERBOSE_HELP = "also print details: what is loaded, from where, and how long it took"

EXIT_CODES = """exit status:
  0    every input was scored (or the command did what it was asked)
  1    some inputs were skipped: each is reported on stderr, the rest were processed
  2    a usage, model or store error: the message says what to change
  3    an internal error: a bug in cityclf (add --debug for its traceback)
  130  interrupted: rerun to continue (a store keeps everything finished)"""


class Parser(argparse.ArgumentParser):
    """argparse with two-line usage errors: the error (and the nearest valid word), then where the help is."""

    def error(self, message: str):
        self.exit(USAGE, f"{self.prog}: error: {suggest(message)}\nsee `{self.prog} --help`\n")


def suggest(message: str) -> str:
    """argparse's 'invalid choice' message, as 'unknown X; did you mean Y?'."""
    import difflib
    import re

    found = re.match(r"argument (\S+): invalid choice: '?([^' ]*)'? \(choose from (.*)\)$", message)
    if not found:
        return message
    what, word, choices = found.groups()
    options = [c.strip(" '") for c in choices.split(",")]
    near = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    name = "command" if what in ("COMMAND", "SUBCOMMAND") else f"value for {what}"
    return f"unknown {name} {word!r}" + (f"; did you mean {near[0]}?" if near else f"; choose from {', '.join(options)}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cityclf",
        description="Score and classify anime images with CityClassifiers heads on CLIP embeddings.",
        epilog=EXIT_CODES + "\n\nRun `cityclf COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cityclf {__version__}")
    add_global_options(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    for group in GROUPS:
        group.register(sub)
    sub.choices["demo"].set_defaults(func=cmd_demo)
    sub.choices["completion"].set_defaults(build_parser=build_parser)  # it describes this very parser
    for command in all_parsers(parser):  # a command's --help opens at least with its one-line help
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                for line in action._choices_actions:
                    child = action.choices[line.dest]
                    child.description = child.description or line.help[:1].upper() + line.help[1:] + "."
    for command in all_parsers(parser)[1:]:  # `cityclf score ... --debug -q` works too
        add_global_options(command, argparse.SUPPRESS)
    return parser


def add_global_options(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", default=default, help=QUIET_HELP)
    if "--verbose" not in p._option_string_actions:  # pixiv train/eval have their own (listing more, too)
        loud.add_argument("-v", "--verbose", action="store_true", default=default, help=VERBOSE_HELP)


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every (sub)subcommand's parser, depth first."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found += all_parsers(child)
    return found


def short_help(parser: argparse.ArgumentParser) -> str:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    width = max(len(c.dest) for c in sub._choices_actions)
    lines = [f"  {c.dest.ljust(width)}  {c.help}" for c in sub._choices_actions]
    return ("usage: cityclf COMMAND [options]\n\n" + parser.description + "\n\ncommands:\n" + "\n".join(lines)
            + "\n\nRun `cityclf COMMAND --help` for a command's options, `cityclf --help` for exit codes.\n")


def check_option_names(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """An unknown --option is named as such, with the nearest real one (argparse would report a misspelt
    required option, e.g. --modle, as the missing --model)."""
    import difflib

    sub = parser
    for word in (t for t in argv if not t.startswith("-")):  # the (sub)subcommand that parses argv
        choices = next((a.choices for a in sub._actions if isinstance(a, argparse._SubParsersAction)), None)
        if not choices or word not in choices:
            break
        sub = choices[word]
    if sub is parser:
        return
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
        sub.error(f"unknown option {name}" + (f"; did you mean {near[0]}?" if near else ""))


def set_loudness(args) -> None:
    """-q: no progress bars and no notes; -v: debug notes too."""
    import logging

    from ..notices import log

    if getattr(args, "quiet", False):
        log.setLevel(logging.WARNING)
        if hasattr(args, "no_progress"):
            args.no_progress = True
        sys.stderr = QuietStream(sys.stderr)
    elif getattr(args, "verbose", False):
        log.setLevel(logging.DEBUG)


class QuietStream:
    """stderr under -q: the command's own progress lines (`cityclf: ...`) are dropped; errors, warnings and
    skipped inputs, and anything that is not the command's, pass."""

    DROP = re.compile(r"^cityclf[\w -]*: (?!error|warning|internal error|this is a bug|skipped|interrupted)")

    def __init__(self, stream):
        self.stream, self.pending = stream, ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if not self.DROP.match(line):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending and not self.DROP.match(self.pending):
            self.stream.write(self.pending)
        self.pending = ""
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def cmd_demo(args) -> int:
    from ..demo import run_demo
    from .common import progress_enabled

    return run_demo(Path(args.dir), main, progress=progress_enabled(args))


def main(argv: list[str] | None = None) -> int:
    from ..notices import to_stderr

    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 never stops output
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    to_stderr()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # `cityclf` alone: what it can do, in a screen
        print(short_help(parser), end="")
        return OK
    check_option_names(parser, argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("give a command (e.g. cityclf demo)")
    stderr = sys.stderr
    set_loudness(args)
    try:
        return args.func(args)
    except CityClfError as e:
        print(f"cityclf: error: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt as e:  # one instruction: the work's own (Interrupted), else the store's
        hint = getattr(e, "hint", None) or ("the store keeps everything finished: rerun to continue"
                                            if getattr(args, "store", None) else "")
        print("\ncityclf: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # e.g. `cityclf score ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except OSError as e:  # a full disk, a read-only folder, a long name...: the user's to fix, not a bug
        error = file_system_error(e)
        if error is None:
            return internal_error(e, args.debug)
        print(f"cityclf: error: {error}", file=sys.stderr)
        return USAGE
    except Exception as e:  # noqa: BLE001  (anything else is a bug of ours: say so, distinctly)
        return internal_error(e, args.debug)
    finally:
        if sys.stderr is not stderr:  # -q's filter ends with the command
            sys.stderr.flush()
            sys.stderr = stderr


def internal_error(e: BaseException, debug: bool) -> int:
    """Say that `e` is a bug of ours, distinctly (the traceback only with --debug)."""
    if debug:
        traceback.print_exc()
    print(f"cityclf: internal error: {type(e).__name__}: {e}\n"
          "cityclf: this is a bug in cityclf, not in your files or options. "
          + ("Please report it with the traceback above." if debug else
             "Run the same command with --debug to see the traceback, and please report it."),
          file=sys.stderr)
    return INTERNAL


if __name__ == "__main__":
    sys.exit(main())
