"""The README's `cityclf ...` lines that use the demo folder run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from cityclf_core.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def demo_lines() -> list[str]:
    """Indented code lines starting with `cityclf ` that mention cityclf-demo (continuations joined)."""
    lines, pending = [], ""
    for raw in README.read_text(encoding="utf-8").splitlines():
        if not raw.startswith("    "):
            pending = ""
            continue
        text = raw.strip()
        if pending:
            text = pending + " " + text
        elif not text.startswith("cityclf "):
            continue
        if text.endswith("\\"):
            pending = text[:-1].strip()
            continue
        pending = ""
        text = re.sub(r"\s+#.*$", "", text)
        if "cityclf-demo" in text:
            lines.append(text)
    return lines


def test_the_readme_demo_lines_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lines = demo_lines()
    commands = [shlex.split(line)[1] for line in lines]
    assert {"train", "review", "query", "prune", "export", "grid"} <= set(commands)
    # `cityclf demo` first (the README's first line); then each line exactly as written
    assert main(["demo"]) == 0
    for line in lines:
        code = main(shlex.split(line)[1:])
        out, err = capsys.readouterr()
        assert code == 0, f"{line}\n{err[-2000:]}"
    assert not (tmp_path / "samples").exists() and not (tmp_path / "models").exists()  # all under cityclf-demo/
    assert (tmp_path / "cityclf-demo" / "trained" / "MyCompression-v0.1.safetensors").is_file()
