"""Benchmark: near-duplicate search (`cityclf dedupe`) on stores of 10k, 100k and 1M synthetic embeddings.

Each store holds N whole-image embeddings (768 dimensions, as ViT-L/14's) of
random directions, 1% of them planted near-copies of another (cosine about 0.98).
Each search runs in a fresh process reading the store, so its time includes
reading the embeddings and its peak resident memory is its own. Exact search is
run where it takes minutes, not hours (it is O(N^2)); the approximate search
(faiss inverted-file range search, the `ann` extra) at every size. Recall: the share of exact search's
pairs that the approximate search finds, on a store of --recall-rows.

    python benchmarks/bench_dedupe.py [--rows 10000 100000 1000000] [--exact-up-to 100000] [--recall-rows 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cityclf_core.store import EmbeddingStore  # noqa: E402

DIM = 768
THRESHOLD = 0.95


def build(db: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    now = time.time()
    with EmbeddingStore(db) as store:
        enc = store.register_encoder("bench-identity", "bench", "bench-clip", 224, DIM)
        block = 20_000
        for start in range(0, n, block):
            m = min(n, start + block) - start
            v = rng.normal(size=(m, DIM)).astype(np.float32)
            planted = rng.random(m) < 0.01
            if planted.any():  # a near-copy of another vector of this block
                src = rng.choice(np.flatnonzero(~planted), planted.sum())
                v[planted] = v[src] + 0.12 * rng.normal(size=(planted.sum(), DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            rows = []
            for i in range(m):
                key = hashlib.sha256(f"{seed}:{start + i}".encode()).hexdigest()
                rows.append((f"/bench/{(start + i) // 1000:04d}/{start + i:07d}.png", key, v[i]))
            with store.transaction():
                store.db.executemany("INSERT INTO files (path, size, mtime_ns, content, status, updated) "
                                     "VALUES (?, 1, 1, ?, 'ok', ?)", [(p, c, now) for p, c, _ in rows])
                store.db.executemany("INSERT INTO embeddings VALUES (?,?,?,?,?)",
                                     [(c, enc.id, "whole", 1, e.tobytes()) for _, c, e in rows])


PROBE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from cityclf_core.dataset.dedupe import find_duplicates, similar_pairs, stored_vectors
from cityclf_core.store import EmbeddingStore
t = time.perf_counter()
with EmbeddingStore({db!r}, create=False, readonly=True) as store:
    if {pairs!r}:
        paths, vectors = stored_vectors(store)
        pairs = sorted((i, j) for i, j, _ in similar_pairs(vectors, {threshold!r}, {method!r}))
        print(json.dumps(pairs))
        groups = []
    else:
        groups = find_duplicates(store, {threshold!r}, method={method!r})
print('RESULT', len(groups), time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      file=sys.stderr)
"""


def probe(db: Path, method: str, pairs: bool = False) -> tuple[float, float, int, str]:
    code = PROBE.format(root=str(ROOT), db=str(db), threshold=THRESHOLD, method=method, pairs=pairs)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("RESULT"))
    _, groups, seconds, rss_kb = line.split()
    return float(seconds), int(rss_kb) / 1024, int(groups), proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--exact-up-to", type=int, default=100_000, help="run exact search only up to this size")
    ap.add_argument("--recall-rows", type=int, default=20_000)
    args = ap.parse_args()
    print(f"threshold {THRESHOLD}, {DIM}-d embeddings, 1% planted near-copies; a fresh process per search\n")
    print("| stored embeddings | method | seconds | peak RSS (MiB) | groups |")
    print("|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-dedupe-") as tmp:
        for n in args.rows:
            db = Path(tmp) / f"s{n}.db"
            build(db, n)
            for method in ("exact", "ann"):
                if method == "exact" and n > args.exact_up_to:
                    print(f"| {n:,} | exact | not run (O(N^2): hours) | | |", flush=True)
                    continue
                seconds, rss, groups, _ = probe(db, method)
                print(f"| {n:,} | {method} | {seconds:.1f} | {rss:.0f} | {groups:,} |", flush=True)
            db.unlink()
        db = Path(tmp) / "recall.db"
        build(db, args.recall_rows, seed=1)
        exact = {tuple(p) for p in json.loads(probe(db, "exact", pairs=True)[3])}
        ann = {tuple(p) for p in json.loads(probe(db, "ann", pairs=True)[3])}
        print(f"\nrecall of ann against exact on {args.recall_rows:,} embeddings: {len(ann & exact)}/{len(exact)} "
              f"pairs = {len(ann & exact) / max(1, len(exact)):.4f} (false pairs: {len(ann - exact)})")


if __name__ == "__main__":
    main()
