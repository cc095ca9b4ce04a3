"""What a CLIP's identity costs: hashing a CLIP folder with one ~1.7 GB safetensors file (random bytes, the
size of ViT-L/14's full CLIP in fp32), read from disk, then from the page cache, then remembered.

    python benchmarks/bench_fingerprint.py [--gb 1.7] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import tempfile
import time
from pathlib import Path


def make_clip(folder: Path, size: int) -> None:
    """A folder a CLIP folder's checks accept: a ViT-L-shaped config and one uint8 tensor of `size` bytes."""
    (folder / "config.json").write_text(json.dumps({
        "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768}))
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(os.urandom(n))
            left -= n


def drop_from_page_cache(folder: Path) -> None:
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.7)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        os.environ["CITYCLF_CACHE"] = str(tmp / "cache")
        from cityclf_core.loading import fingerprints

        folder = tmp / "clip"
        folder.mkdir()
        size = int(args.gb * 1e9)
        make_clip(folder, size)
        drop_from_page_cache(folder)
        rows = []
        t = time.perf_counter()
        fingerprints.folder_fingerprint(folder)
        rows.append(("hashed, read from disk", time.perf_counter() - t))
        t = time.perf_counter()
        fingerprints.folder_fingerprint(folder)
        rows.append(("hashed, in the page cache", time.perf_counter() - t))
        import transformers  # noqa: F401 - imported once anyway when a CLIP loads; not the identity's cost

        t = time.perf_counter()
        fingerprints.clip_fingerprint(folder)  # hashes, reads the former identity, remembers both
        rows.append(("first use: hashed and remembered", time.perf_counter() - t))
        t = time.perf_counter()
        fingerprints.clip_fingerprint(folder)
        rows.append(("remembered (size and mtime unchanged)", time.perf_counter() - t))
        print(f"CLIP folder with a {size / 1e9:.2f} GB safetensors file")
        for what, s in rows:
            print(f"  {what:40s} {s * 1000:10.1f} ms" + (f"  ({size / s / 1e9:.2f} GB/s)" if s > 0.05 else ""))


if __name__ == "__main__":
    main()
