"""Benchmark: how long `cityclf` takes to answer the commands that need no model, and what they import.

Each command runs in a fresh process (as a user types it), several times; the table gives the median
wall time, the median CPU time (user + system: what the command costs, less swayed than the wall time by other
work on a shared machine), whether torch or transformers were imported, and the exit code. A small store is scored first
with the demo's tiny models, so that `query`, `store-info`, `export` and `prune` have something to read.

    python benchmarks/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: prints, after the command, which heavy modules it imported and the command's exit code
PROBE = ("import sys, runpy\n"
         "sys.argv = ['cityclf', *sys.argv[1:]]\n"
         "code = 0\n"
         "try:\n"
         "    runpy.run_module('cityclf_core', run_name='__main__')\n"
         "except SystemExit as e:\n"
         "    code = e.code or 0\n"
         "print('HEAVY', ','.join(m for m in ('torch', 'transformers') if m in sys.modules) or '-', file=sys.stderr)\n"
         "sys.exit(code)\n")

COMMANDS = [
    ["--help"],
    ["models"],
    ["store-info", "--store", "cityclf-demo/ds.db"],
    ["query", "--store", "cityclf-demo/ds.db", "--head", "Demo-Aesthetics-v0", "--min", "0.3", "--top", "3"],
    ["export", "--store", "cityclf-demo/ds.db", "--out", "cityclf-demo/emb.npz"],
    ["prune", "--store", "cityclf-demo/ds.db", "--dry-run"],
]


def run(argv: list[str], cwd: Path, env: dict) -> tuple[float, float, str, int]:
    """(wall seconds, CPU seconds, heavy modules imported, exit code) of one fresh run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    heavy = next((line.split(" ", 1)[1] for line in done.stderr.splitlines() if line.startswith("HEAVY ")), "?")
    return seconds, cpu, heavy, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (default 5); the median is shown")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="cityclf-startup-") as tmp:
        work = Path(tmp)
        demo = "cityclf-demo/models/"
        for argv in (["demo"], ["score", "cityclf-demo/images", "--store", "cityclf-demo/ds.db", "--clip",
                                demo + "tiny-clip", "--model", demo + "Demo-Aesthetics-v0.safetensors",
                                "--model", demo + "Demo-Compression-v0.safetensors"]):
            subprocess.run([sys.executable, "-m", "cityclf_core", *argv], cwd=work, env=env, check=True,
                           capture_output=True)
        python_alone = statistics.median(run_plain(work, env) for _ in range(args.repeat))
        print(f"{args.repeat} runs each, median wall time of a fresh process "
              f"(a bare `python -c pass` takes {python_alone:.2f} s here)")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start")
        print("| command | wall seconds | CPU seconds | imports torch/transformers | exit |")
        print("|---|---|---|---|---|")
        for argv in COMMANDS:
            runs = [run(argv, work, env) for _ in range(args.repeat)]
            seconds = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"| cityclf {' '.join(argv[:1])} | {seconds:.2f} | {cpu:.2f} | {runs[-1][2]} | {runs[-1][3]} |")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


def run_plain(cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], cwd=cwd, env=env, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
