"""Benchmark: how long `cityclf` takes to answer the commands that need no model, and what they import.

Each command runs in a fresh process (as a user types it), several times; the table gives the median
wall time and whether torch or transformers were imported. A small store is built first from the
demo's tiny models, so that `query`, `store-info`, `export` and `prune` have something to read.

    python benchmarks/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: prints, after the command, which heavy modules it imported
PROBE = ("import sys, runpy\n"
         "sys.argv = ['cityclf', *sys.argv[1:]]\n"
         "try:\n"
         "    runpy.run_module('cityclf_core', run_name='__main__')\n"
         "except SystemExit:\n"
         "    pass\n"
         "print('HEAVY', ','.join(m for m in ('torch', 'transformers') if m in sys.modules) or '-', file=sys.stderr)\n")

COMMANDS = [
    ["--help"],
    ["models"],
    ["store-info", "--store", "cityclf-demo/ds.db"],
    ["query", "--store", "cityclf-demo/ds.db", "--head", "Demo-Aesthetics-v0", "--min", "0.3", "--top", "3"],
    ["export", "--store", "cityclf-demo/ds.db", "--out", "cityclf-demo/emb.npz"],
    ["prune", "--store", "cityclf-demo/ds.db", "--dry-run"],
]


def run(argv: list[str], cwd: Path, env: dict) -> tuple[float, str, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    heavy = next((line.split(" ", 1)[1] for line in done.stderr.splitlines() if line.startswith("HEAVY ")), "?")
    return seconds, heavy, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (default 5); the median is shown")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="cityclf-startup-") as tmp:
        work = Path(tmp)
        demo = "cityclf-demo/models/"
        for argv in (["demo"], ["embed", "cityclf-demo/images", "--store", "cityclf-demo/ds.db", "--clip",
                                demo + "tiny-clip", "--model", demo + "Demo-Aesthetics-v0.safetensors"]):
            subprocess.run([sys.executable, "-m", "cityclf_core", *argv], cwd=work, env=env, check=True,
                           capture_output=True)
        python_alone = statistics.median(run_plain(work, env) for _ in range(args.repeat))
        print(f"{args.repeat} runs each, median wall time of a fresh process "
              f"(a bare `python -c pass` takes {python_alone:.2f} s here)")
        print("| command | seconds | imports torch/transformers | exit |")
        print("|---|---|---|---|")
        for argv in COMMANDS:
            runs = [run(argv, work, env) for _ in range(args.repeat)]
            seconds = statistics.median(r[0] for r in runs)
            print(f"| cityclf {' '.join(argv[:1])} | {seconds:.2f} | {runs[-1][1]} | {runs[-1][2]} |")


def run_plain(cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], cwd=cwd, env=env, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
