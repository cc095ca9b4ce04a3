"""Packaging: requirements.txt in step with pyproject (never torch), registry metadata, the console command."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def names(reqs):
    return {re.split(r"[<>=!~ \[]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in reqs if r.strip()}


def test_requirements_match_pyproject_without_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert "torch" not in names(reqs) and "torchvision" not in names(reqs)
    assert names(reqs) == names(project["dependencies"]) - {"torch"}
    pinned = {names([r]).pop(): r.replace(" ", "") for r in project["dependencies"]}
    for r in reqs:
        assert pinned[names([r]).pop()] == r.replace(" ", ""), f"{r} differs from pyproject"


def test_registry_metadata_and_console_script():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "requires-comfyui" in comfy
    assert re.fullmatch(r"\d+\.\d+\.\d+", data["project"]["version"])
    assert "comfyui" not in data["project"]["name"].lower()
    assert data["project"]["scripts"]["cityclf"] == "cityclf_core.cli:main"


def test_one_version_in_pyproject_the_package_and_the_changelog():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert re.search(r'^__version__ = "(.+)"$', (ROOT / "cityclf_core" / "__init__.py").read_text(), re.M)[1] == version
    assert re.search(r"^## (\S+)$", (ROOT / "CHANGELOG.md").read_text(), re.M)[1] == version  # the newest release first


def test_no_eval_exec_or_runtime_pip():
    for path in list((ROOT / "cityclf_core").glob("*.py")) + list((ROOT / "nodes").glob("*.py")) + [ROOT / "__init__.py"]:
        text = path.read_text()
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), path
        assert "pip install" not in text and "subprocess" not in text, path


def test_help_runs_for_every_command():
    out = subprocess.run([sys.executable, "-m", "cityclf_core", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for command in ("score", "embed", "query", "grid", "export", "merge", "train", "review", "synth", "models",
                    "demo", "store-info"):
        assert command in out.stdout
        sub = subprocess.run([sys.executable, "-m", "cityclf_core", command, "--help"], capture_output=True,
                             text=True, cwd=ROOT)
        assert sub.returncode == 0 and "usage:" in sub.stdout


def test_every_benchmark_imports_what_exists():
    """Benchmarks are not run by CI; this catches one that still imports a module that was moved or removed."""
    import importlib.util

    bench = ROOT / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        for path in sorted(bench.glob("bench_*.py")):
            spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))  # main() runs only as __main__
    finally:
        sys.path.remove(str(bench))
