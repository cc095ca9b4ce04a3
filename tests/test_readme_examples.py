"""Every command block of the README and of the docs pages that can run offline runs as written.

Each page gets a fresh temporary folder; its blocks run there in order (a later block may use what
an earlier one made, as a reader following the page would). A block that needs the network or the
reader's own files (a package install, a clone, `~/...`, a released model, a cluster) is left out
by the patterns below, or by an HTML comment `<!-- not run by tests/test_readme_examples.py: WHY -->`
on the line before it. Nothing is written into the checkout: the examples write under the folder
they run in (the docs keep it to `cityclf-demo/`, which git ignores).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cityclf_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: a block is a command block when its first line starts with one of these
COMMAND_WORDS = ("cityclf", "python", "python3", "source", "mkdir", "cd ", "git ", "pip ", "scripts/", "cat ",
                 "COMFYUI_DIR=", "TORCH_INDEX=", ".venv/")
#: what makes a block need the network or the reader's own files (or a machine that is not this one)
NOT_OFFLINE = re.compile(r"pip install|git clone|~/|/data/|/tmp/|--address|https?://|\.venv|"
                         r"CityAesthetics-Anime|CCAnime-|openai/clip|PATH\.\.\.|NAME_OR_FILE|"
                         r"my-head\.safetensors|img\.png|COMFYUI_DIR|data/config\.yaml")
SKIP_MARK = "<!-- not run by tests/test_readme_examples.py"
SHELL_SYNTAX = re.compile(r"[|&;<>$`*]|\bcd\b")


def code_blocks(text: str) -> list[tuple[str, bool]]:
    """(block, marked as not run) for each fenced bash/sh block and each indented block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        marked = i > 0 and lines[i - 1].strip().startswith(SKIP_MARK)
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            if fence.group(1) in ("bash", "sh", "shell"):
                blocks.append(("\n".join(lines[i + 1:j]), marked))
            i = j + 1
            continue
        if line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()):
            indent = len(line) - len(line.lstrip())
            j = i
            while j < len(lines) and (lines[j].startswith(" " * indent) or not lines[j].strip()):
                j += 1
            body = [raw[indent:] for raw in lines[i:j]]
            while body and not body[-1].strip():
                body.pop()
            blocks.append(("\n".join(body), marked))
            i = j
            continue
        i += 1
    return [(b, m) for b, m in blocks if b.lstrip().startswith(COMMAND_WORDS)]


def runnable(page: Path) -> list[str]:
    return [b for b, marked in code_blocks(page.read_text(encoding="utf-8")) if not marked and not NOT_OFFLINE.search(b)]


def simple_cityclf_lines(block: str) -> list[list[str]] | None:
    """The block as argument lists when it is only plain `cityclf ...` lines (run in this process,
    which is much faster than a new interpreter per line); None when it needs a shell."""
    commands = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line:
            continue
        if not line.startswith("cityclf ") or SHELL_SYNTAX.search(line):
            return None
        commands.append(shlex.split(line)[1:])
    return commands


def shell_env(folder: Path) -> dict:
    """PATH with `cityclf` and `python` as an activated venv would have them."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "cityclf").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cityclf_core "$@"\n')
    (bin_dir / "cityclf").chmod(0o755)
    for name in ("python", "python3"):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(sys.executable)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def git_status() -> str:
    done = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def test_the_docs_have_runnable_blocks_and_the_expected_skips():
    blocks = {page.name: runnable(page) for page in PAGES}
    commands = {argv[0] for b in sum(blocks.values(), []) for argv in simple_cityclf_lines(b) or []}
    assert {"demo", "embed", "score", "train", "review", "query", "prune", "export", "grid", "import-shards"} <= commands
    # the README's two commands are installs (run by tests/test_newcomer.py, not here)
    readme = [b for b, _ in code_blocks((ROOT / "README.md").read_text(encoding="utf-8"))]
    assert any(".ci/run" not in b and "python -m pytest" in b for b in readme)


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: p.name)
def test_each_page_runs_as_written(page, tmp_path, monkeypatch, capsys):
    before = git_status()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CITYCLF_CACHE", str(tmp_path / ".cache"))
    for block in runnable(page):
        commands = simple_cityclf_lines(block)
        if commands is None:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=shell_env(tmp_path),
                                  capture_output=True, text=True)
            assert done.returncode == 0, f"{page.name}:\n{block}\n{done.stderr[-2000:]}"
            continue
        for argv in commands:
            code = main(argv)
            out, err = capsys.readouterr()
            assert code == 0, f"{page.name}: cityclf {shlex.join(argv)}\n{err[-2000:]}"
    made = {p.name for p in tmp_path.iterdir()} - {".bin", ".cache"}
    assert made <= {"cityclf-demo"}, f"{page.name}'s examples wrote outside cityclf-demo/: {sorted(made)}"
    assert git_status() == before, "the examples wrote into the checkout"
