"""Benchmark: `cityclf report` on stores of 10k and 100k synthetic rows, and its page in headless Chromium.

Each store holds N paths with a score head and a three-class classifier; the
files are hard links to 50 small distinct pictures (512x384 PNG), so thumbnails
are made once per content and the rest are shared. Measured:

  generate     a fresh `cityclf report` in its own process (reading the store, 50 thumbnails, data files)
  rerun        the same into the same folder (thumbnails reused, folder swapped)
  first paint  page opened from file:// until the first grid is painted (all data chunks loaded and parsed)
  re-filter    in the page: a range filter on one head plus a sort by a class, then the grid drawn (mean of 5)

    python benchmarks/bench_report.py [--rows 10000 100000] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cityclf_core.store import EmbeddingStore  # noqa: E402
from cityclf_core.store.rows import StoredScore  # noqa: E402

AES, CLS = "Aes-v1", "Cls-v1"
DISTINCT = 50


def build(base: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = base / "src"
    src.mkdir(parents=True)
    sources = []
    for k in range(DISTINCT):
        arr = rng.integers(0, 255, (384 // 8, 512 // 8, 3), dtype=np.uint8)
        path = src / f"p{k}.png"
        Image.fromarray(arr).resize((512, 384)).save(path)
        sources.append((path, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size))
    images = base / "images"
    db = base / "s.db"
    aes, probs = rng.beta(2, 3, n), rng.dirichlet((1, 1, 1), n)
    with EmbeddingStore(db) as store:
        for start in range(0, n, 10_000):
            with store.transaction():
                for i in range(start, min(n, start + 10_000)):
                    folder = images / f"{i // 1000:03d}"
                    folder.mkdir(parents=True, exist_ok=True)
                    path, content, size = sources[i % DISTINCT]
                    target = folder / f"img{i:06d}.png"
                    os.link(path, target)
                    store.put_file(str(target), size, 0, content)
                    p = {c: float(v) for c, v in zip(("Pass", "JPEG", "WEBP"), probs[i])}
                    store.put_scores([
                        (str(target), AES, "mean", StoredScore(float(aes[i]), f"{aes[i]:.0%}", None, "score")),
                        (str(target), CLS, "mean", StoredScore(1 - p["Pass"], max(p, key=p.get), p, "class")),
                    ])
    return db


def report(db: Path, out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cityclf_core", "report", "--store", str(db), "--out", str(out)],
                   check=True, env=env, capture_output=True)
    return time.perf_counter() - t


def page_times(index: Path, chromium: str) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(index.as_uri())
            page.wait_for_function("() => window.cityclfReport && cityclfReport.firstPaint !== null", timeout=120_000)
            first = page.evaluate("() => cityclfReport.firstPaint")
            refilter = []
            for k in range(5):
                refilter.append(page.evaluate(f"""() => {{
                    document.querySelector('input[data-min="{AES}"]').value = "{0.3 + k * 0.05}";
                    document.getElementById("sort").selectedIndex = {2 + k % 3};
                    cityclfReport.update();
                    return cityclfReport.lastUpdateMs; }}"""))
            return first, sum(refilter) / len(refilter)
        finally:
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()
    results = []
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
            base = Path(tmp)
            db = build(base, n)
            out = base / "rep"
            gen = report(db, out)
            rerun = report(db, out)
            size = sum(f.stat().st_size for f in (out / "data").iterdir()) / 1e6
            first, refilter = page_times(out / "index.html", args.chromium) if os.path.exists(args.chromium) \
                else (float("nan"), float("nan"))
            results.append((n, gen, rerun, size, first, refilter))
            print(f"{n} rows done", file=sys.stderr, flush=True)
    print("| rows | generate | rerun (thumbnails reused) | data files | first paint | re-filter + sort |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, gen, rerun, size, first, refilter in results:
        print(f"| {n:,} | {gen:.1f} s | {rerun:.1f} s | {size:.1f} MB | {first:.0f} ms | {refilter:.0f} ms |")


if __name__ == "__main__":
    main()
