"""Benchmark: an unchanged `cityclf embed` rerun over N stored files (default 20,000).

Builds a store whose rows say every file is embedded (synthetic embeddings; the
files exist, so their stats are real), then times the rerun as a user types it.
The rerun must decide from the store and the files' stats alone: no file read,
no CLIP loaded (here a CLIP folder that would fail to load is given, to prove it).

    python benchmarks/bench_rerun.py [--files 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cityclf_core.cli import main  # noqa: E402
from cityclf_core.loading.clips import clip_identity, source_name  # noqa: E402
from cityclf_core.samples import build_tiny_clip  # noqa: E402
from cityclf_core.store import EmbeddingStore  # noqa: E402


def build(root: Path, n: int) -> tuple[Path, Path, Path]:
    files, clip, db = root / "files", root / "clip", root / "s.db"
    files.mkdir()
    build_tiny_clip(clip, image_size=32, patch_size=8)
    identity = clip_identity(str(clip))
    emb = np.zeros((1, 768), dtype=np.float32)
    with EmbeddingStore(db) as store:
        row = store.register_encoder(identity, "clip", source_name(clip), 32, 768)
        with store.transaction():
            for i in range(n):
                sub = files / f"{i // 1000:03d}"
                sub.mkdir(exist_ok=True)
                p = sub / f"{i:06d}.png"
                data = i.to_bytes(4, "little")
                p.write_bytes(data)
                st = p.stat()
                content = hashlib.sha256(data).hexdigest()
                store.put_file(str(p.resolve()), st.st_size, st.st_mtime_ns, content)
                store.put_embedding(content, row.id, "whole", emb)
    return files, clip, db


def main_(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20_000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files, clip, db = build(Path(tmp), args.files)
        os.environ["CITYCLF_CACHE"] = str(Path(tmp) / "cache")
        # the files are not images: find_images walks by extension, so name them .png (they are never read)
        times = []
        for attempt in range(2):
            err = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stderr(err):
                code = main(["embed", str(files), "--store", str(db), "--clip", str(clip), "--no-progress"])
            times.append(time.perf_counter() - start)
            if attempt == 0:
                (clip / "model.safetensors").rename(clip / "moved-away.safetensors.bak")  # 2nd: weights gone
                for f in (clip / "config.json",):
                    os.utime(f)
            assert code == 0, err.getvalue()
            assert "the CLIP was not loaded" in err.getvalue(), err.getvalue()
        print(f"| stored files | rerun, CLIP folder intact | rerun, CLIP weights moved away |")
        print(f"|---|---|---|")
        print(f"| {args.files:,} | {times[0]:.2f} s | {times[1]:.2f} s |")


if __name__ == "__main__":
    main_()
