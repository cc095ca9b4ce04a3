"""Benchmark: `cityclf query` on stores of 10k, 100k and 1M synthetic rows -- time and peak memory.

Each store holds scores of three heads (a score head and two classifiers, their
probabilities as stored JSON) for N files. Only the files that can be selected
exist on disk (a query checks the files it returns). Each query runs as a user
types it, in a fresh process, so its peak resident memory is its own.

    python benchmarks/bench_query.py [--rows 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cityclf_core.store import EmbeddingStore  # noqa: E402

QUERIES = {
    "--top 100 by a score (band on it)": ["--head", "Aesthetic", "--head", "Compression", "--head", "Chroma",
                                          "--min", "0.2", "--top", "100"],
    "--top 100 by a class probability": ["--head", "Compression", "--head", "Aesthetic", "--sort-by",
                                         "Compression:JPEG", "--top", "100"],
    "band on two heads (few rows)": ["--min", "Aesthetic=0.9995", "--max", "Compression=0.5"],
}


def build(db: Path, files: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    now = time.time()
    with EmbeddingStore(db) as store:
        block = 50_000
        for start in range(0, n, block):
            rows = []
            for i in range(start, min(n, start + block)):
                path = str(files / f"{i // 1000:04d}" / f"{i:07d}.png")
                a = rng.random()
                j, w = rng.random(), rng.random()
                total = 1 + j + w
                probs = {"Pass": 1 / total, "JPEG": j / total, "WEBP": w / total}
                chroma = rng.random()
                rows.append((path, a, probs, chroma))
            with store.transaction():
                store.db.executemany("INSERT INTO files (path, size, mtime_ns, content, status, updated) "
                                     "VALUES (?, 1, 1, ?, 'ok', ?)", [(p, p, now) for p, *_ in rows])
                store.db.executemany(
                    "INSERT INTO scores (path, head, combine, score, label, probs, updated, kind) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    [x for p, a, probs, c in rows for x in (
                        (p, "Aesthetic", "mean", a, "", None, now, "score"),
                        (p, "Compression", "mean", 1 - probs["Pass"], max(probs, key=probs.get), json.dumps(probs),
                         now, "class"),
                        (p, "Chroma", "mean", c, "Pass" if c < 0.5 else "CA",
                         json.dumps({"Pass": 1 - c, "CA": c}), now, "class"))])
        for label in ("Pass", "JPEG", "WEBP", "CA"):  # as put_scores makes them for a classifier's classes
            store.ensure_label_index(label)
        # the files a query can return exist (the rest are never looked at)
        wanted = set()
        for sql in ("SELECT path FROM scores WHERE head='Aesthetic' ORDER BY score DESC LIMIT 300",
                    "SELECT path FROM scores WHERE head='Compression' ORDER BY json_extract(probs, '$.JPEG') DESC "
                    "LIMIT 300"):
            wanted.update(r[0] for r in store.db.execute(sql))
    for p in wanted:
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Path(p).write_bytes(b"x")


PROBE = ("import resource, sys, time; sys.path.insert(0, {root!r}); from cityclf_core.cli import main; "
         "t = time.perf_counter(); code = main({argv!r}); "
         "print('RESULT', code, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
         "file=sys.stderr)")


def measure(argv: list[str]) -> tuple[int, float, float, int]:
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), argv=argv)], capture_output=True,
                       text=True)
    wall = time.perf_counter() - start
    line = [x for x in p.stderr.splitlines() if x.startswith("RESULT")]
    if not line:
        raise SystemExit(p.stderr[-2000:])
    _, code, inner, rss_kb = line[-1].split()
    wall = float(inner)  # the command itself; start-up (imports) excluded
    rows = len(p.stdout.splitlines()) - 1
    return int(code), wall, int(rss_kb) / 1024, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = ap.parse_args()
    print("| rows | query | time (the command, imports excluded) | peak RSS of the process | rows out |")
    print("|---|---|---|---|---|")
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            db, files = Path(tmp) / "s.db", Path(tmp) / "files"
            t = time.perf_counter()
            build(db, files, n)
            print(f"<!-- built {n:,} rows x 3 heads in {time.perf_counter() - t:.1f} s, "
                  f"{os.path.getsize(db) / 2**20:.0f} MiB -->", flush=True)
            for name, extra in QUERIES.items():
                code, wall, rss, rows = measure(["query", "--store", str(db), "--format", "csv", *extra])
                print(f"| {n:,} | {name} | {wall:.2f} s | {rss:.0f} MiB | {rows} |", flush=True)


if __name__ == "__main__":
    main()
