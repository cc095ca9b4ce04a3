"""A newcomer's first minutes: clone, run the README's two commands, and find the clone as it was.

The two commands are read from the README as written. Their install steps (`python3 -m venv`,
`pip install`) need the package index, so they are skipped here, where the packages are already
installed (this interpreter); their Python parts run offline in a fresh clone: `cityclf demo`, and
the test command (collecting the suite, not running it again inside the suite). Afterwards
`git status` in the clone must be clean: what they write is ignored by git.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^    (python3 -m venv \.venv && .*)$", text, flags=re.M)


def python_parts(command: str) -> list[list[str]]:
    """The steps of `a && b && c` that are not installs, with `.venv/bin/X` as this interpreter's X."""
    steps = []
    for step in command.split("&&"):
        argv = shlex.split(step)
        if argv[:3] == ["python3", "-m", "venv"] or (argv and argv[0].endswith("/pip")):
            continue
        if argv[0] == ".venv/bin/cityclf":
            argv = [sys.executable, "-m", "cityclf_core", *argv[1:]]
        elif argv[0] == ".venv/bin/python":
            argv = [sys.executable, *argv[1:]]
        steps.append(argv)
    return steps


def test_the_readme_has_the_two_commands_ci_runs():
    commands = readme_commands()
    assert len(commands) >= 2
    assert "cityclf demo" in commands[0] and "python -m pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "README.md" in ci and "python -m pytest" in ci  # CI runs the README's test command


def test_a_fresh_clone_runs_the_two_commands_and_stays_clean(tmp_path):
    clone = tmp_path / "cityclf"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1", "CITYCLF_CACHE": str(tmp_path / "cache")}
    demo, tests = (python_parts(c) for c in readme_commands()[:2])
    assert demo == [[sys.executable, "-m", "cityclf_core", "demo"]]
    assert tests == [[sys.executable, "-m", "pytest"]]
    done = subprocess.run(demo[0], cwd=clone, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (clone / "cityclf-demo").is_dir()
    done = subprocess.run([*tests[0], "--collect-only", "-q"], cwd=clone, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", f"the README's commands left files git does not ignore:\n{status}"
