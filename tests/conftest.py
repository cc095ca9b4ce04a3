"""Shared fixtures: tiny random CLIP models and heads in the released layout, sample images.

No network, no real weights, no GPU. The repo root is both the ComfyUI pack
(a package with relative imports) and the home of `cityclf_core`; node tests load
the pack under the name `cityclf_pack`, sharing this process's `cityclf_core`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# CPU-only by design: on a machine with a GPU, 'auto' (the CLI's --device/--dtype, train's device)
# would otherwise mean cuda + bf16 and the suite would test another configuration than CI's.
# CITYCLF_TEST_GPU=1 keeps the GPU visible. Set before torch is imported; subprocesses inherit it.
if not os.environ.get("CITYCLF_TEST_GPU"):
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

import cityclf_core  # noqa: E402
from cityclf_core.samples import build_head, build_tiny_clip, draw_illustration  # noqa: E402

COMPRESSION_LABELS = {"0": "Pass", "1": "JPEG", "2": "WEBP"}


def load_pack():
    """Import the repo root as the ComfyUI pack `cityclf_pack` (as ComfyUI would, by path)."""
    if "cityclf_pack" in sys.modules:
        return sys.modules["cityclf_pack"]
    # one copy of the library in the process: the pack's relative imports find these modules
    import pkgutil

    for info in pkgutil.iter_modules(cityclf_core.__path__):
        if info.name != "__main__":
            importlib.import_module(f"cityclf_core.{info.name}")
    for name, module in list(sys.modules.items()):
        if name == "cityclf_core" or name.startswith("cityclf_core."):
            sys.modules[f"cityclf_pack.{name}"] = module
    spec = importlib.util.spec_from_file_location(
        "cityclf_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["cityclf_pack"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack():
    return load_pack()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_clip_dir(model_dir) -> Path:
    return build_tiny_clip(model_dir / "tiny-clip", image_size=32, patch_size=8, seed=0)


@pytest.fixture(scope="session")
def tiny_clip_dir_b(model_dir) -> Path:
    """A second tiny CLIP with another input size, for multi-encoder grouping."""
    return build_tiny_clip(model_dir / "tiny-clip-48", image_size=48, patch_size=8, seed=1)


@pytest.fixture(scope="session")
def encoder(tiny_clip_dir):
    return cityclf_core.TransformersClipEncoder.load(tiny_clip_dir)


@pytest.fixture(scope="session")
def calibration(encoder) -> torch.Tensor:
    """Embeddings of assorted illustrations and their tiles, to calibrate random heads on."""
    from cityclf_core import CropPolicy, iter_embeddings

    images = [torch.from_numpy(illustration(w, h, seed=100 + i))
              for i, (w, h) in enumerate([(40, 40), (90, 70), (200, 300), (64, 160), (120, 120), (300, 90)])]
    parts = [e for _, e in iter_embeddings(encoder, CropPolicy(tiling=True), images, batch_size=16)]
    return torch.cat(parts)


@pytest.fixture(scope="session")
def score_head_path(model_dir, calibration) -> Path:
    return build_head(model_dir / "TestAesthetics-v1.safetensors", "score", name="TestAesthetics",
                      rev="v1", seed=1, gain=1.0, calibrate_with=calibration)


@pytest.fixture(scope="session")
def class_head_path(model_dir, calibration) -> Path:
    return build_head(model_dir / "TestCompression-v1.safetensors", "class", labels=COMPRESSION_LABELS,
                      name="TestCompression", rev="v1", seed=2, gain=2.0, calibrate_with=calibration)


@pytest.fixture(scope="session")
def score_head(score_head_path):
    return cityclf_core.load_head(score_head_path)


@pytest.fixture(scope="session")
def class_head(class_head_path):
    return cityclf_core.load_head(class_head_path)


def illustration(width: int, height: int, seed: int = 0) -> np.ndarray:
    return draw_illustration(width, height, seed)


def as_image_tensor(*arrays: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 arrays of one size -> an IMAGE batch [B, H, W, 3] float32 in [0, 1]."""
    return torch.stack([torch.from_numpy(a).float() / 255.0 for a in arrays])
