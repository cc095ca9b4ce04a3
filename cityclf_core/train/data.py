"""Training data: category folders scanned, split, and embedded (through the store) or read from .npy."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..dataset.embed import embed_files, register_passes
from ..errors import ConfigError
from ..kinds import HeadKind, get_kind
from ..scoring.crops import CropPlan, CropPolicy, plan_crops
from ..scoring.embedding import ClipPass
from ..scoring.images import IMAGE_EXTENSIONS
from .config import TrainConfig


@dataclass
class Example:
    source: str  # image path or .npy path
    target: float | list  # class index, normalised score, or what the head's kind makes of its folder
    folder: str  # the category folder it came from (stratum)


def scan_folders(root: str | os.PathLike, kind: HeadKind | str, what: str) -> tuple[list[Example], dict]:
    """The reference layout: one folder per category, named by its value: a class ('0_reg', '1_chroma'), a score
    ('0'..'10'), or what the head's kind reads from a folder name.

    what: 'images' or 'npy'. Returns examples and facts (classes found, score range ...).
    """
    kind = get_kind(kind) if isinstance(kind, str) else kind
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data folder {root} not found")
    exts = IMAGE_EXTENSIONS if what == "images" else {".npy"}
    examples: list[Example] = []
    for cat in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        prefix = cat.name.split("_", 1)[0]
        try:
            value = kind.folder_value(prefix)
        except ValueError:
            raise ConfigError(f"{cat}: category folders must start with their {kind.folder_value_name} (like {kind.folder_hint}); "
                              "rename or move it") from None
        files = sorted(f for f in cat.rglob("*") if f.is_file() and f.suffix.lower() in exts)
        examples += [Example(str(f), value, cat.name) for f in files]
    if not examples:
        raise ConfigError(f"no {'images' if what == 'images' else '.npy embeddings'} in category folders under {root}")
    targets = kind.finish_targets([e.target for e in examples], str(root))
    for e, t in zip(examples, targets.values):
        e.target = t
    return examples, targets.facts


def data_kind(root: str | os.PathLike, clip: str) -> tuple[Path, str]:
    """Images or the reference's .npy folders (also under a CLIP/ or META/ subfolder, as it kept them)."""
    root = Path(root)
    if (root / clip).is_dir():
        root = root / clip
    has = lambda exts: any(p.suffix.lower() in exts for p in root.rglob("*") if p.is_file())  # noqa: E731
    if has({".npy"}) and not has(IMAGE_EXTENSIONS):
        return root, "npy"
    return root, "images"


def stratified_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): each category folder split in proportion, seeded; every class keeps a training example."""
    rng = random.Random(seed)
    by_folder: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_folder.setdefault(e.folder, []).append(i)
    train, val = [], []
    for folder in sorted(by_folder):
        idx = by_folder[folder][:]
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction))
        if fraction > 0 and n_val == 0 and len(idx) >= 3:
            n_val = 1
        n_val = min(n_val, len(idx) - 1)
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def random_crop_planner(tile: int, count: int, seed: int, clip_size: int) -> Callable[[int, int, str], CropPlan]:
    """Seeded random tile x tile crops (as the reference's RandomCrop), or the whole image when it is smaller."""

    def plan(height: int, width: int, content: str) -> CropPlan:
        if min(height, width) < tile:
            return plan_crops(height, width, CropPolicy(tiling=False), clip_size)
        rng = random.Random(f"{seed}:{content}")
        boxes = tuple((rng.randint(0, height - tile), rng.randint(0, width - tile)) for _ in range(count))
        return CropPlan(height, width, None, "bilinear", tile, boxes)

    return plan


@dataclass
class Dataset:
    """Embeddings for training (several views per image) and validation (the inference views)."""

    train_views: torch.Tensor  # [total views, D]
    train_offsets: torch.Tensor  # [n_train + 1]
    train_targets: torch.Tensor  # [n_train]
    train_sources: list[str]
    val_views: torch.Tensor
    val_counts: list[int]
    val_targets: torch.Tensor
    val_sources: list[str]
    facts: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train_sources)


def _stack(parts: list[np.ndarray], dim: int) -> tuple[torch.Tensor, list[int]]:
    counts = [int(p.shape[0]) for p in parts]
    if not parts:
        return torch.zeros(0, dim), counts
    return torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False)), counts


def load_npy_dataset(cfg: TrainConfig, root: Path) -> Dataset:
    examples, facts = scan_folders(root, cfg.kind, "npy")
    arrays = []
    for e in examples:
        try:
            a = np.load(e.source, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ConfigError(f"{e.source}: not a numeric .npy embedding ({err})") from None
        a = np.asarray(a, dtype=np.float32).reshape(-1, a.shape[-1]) if a.ndim else None
        if a is None or a.shape[-1] != cfg.features:
            raise ConfigError(f"{e.source}: expected a {cfg.features}-d embedding for model.clip {cfg.clip}, "
                              f"got shape {None if a is None else a.shape}")
        if not np.isfinite(a).all():
            raise ConfigError(f"{e.source}: holds NaN or infinite values")
        arrays.append(a)
    return _assemble(cfg, examples, arrays, arrays, facts)


def _assemble(cfg, examples, train_arrays, val_arrays, facts) -> Dataset:
    train_idx, val_idx = stratified_split(examples, cfg.val_fraction, cfg.seed)
    dim = cfg.features
    tv, tcounts = _stack([train_arrays[i] for i in train_idx], dim)
    vv, vcounts = _stack([val_arrays[i] for i in val_idx], dim)
    offsets = torch.tensor([0, *np.cumsum(tcounts).tolist()], dtype=torch.long)
    tt = torch.tensor([examples[i].target for i in train_idx], dtype=torch.float32)
    vt = torch.tensor([examples[i].target for i in val_idx], dtype=torch.float32)
    return Dataset(tv, offsets, tt, [examples[i].source for i in train_idx], vv, vcounts, vt,
                   [examples[i].source for i in val_idx], facts)


def inference_policy(cfg: TrainConfig, clip_size: int) -> CropPolicy:
    """How the trained head sees images at inference (and validation): its kind's tiling, at the config's tiles."""
    tiles = cfg.kind.tiles_by_default
    return CropPolicy(tiling=tiles, tile_size=(cfg.tile_size or 2 * clip_size) if tiles else None)


def load_image_dataset(cfg: TrainConfig, root: Path, store, encoder, on_file=None, report=None,
                       on_total=None) -> Dataset:
    """Embed the images through the store (each image once), then assemble train/val views.

    Training views: heads whose kind tiles (classifiers) get `crops_per_image`
    seeded random tile crops of images large enough (the whole image otherwise);
    the others the whole image. Validation views: exactly what inference uses.
    on_total(n) is told how many images will be reported to on_file, before the first.
    """
    examples, facts = scan_folders(root, cfg.kind, "images")
    if on_total is not None:
        on_total(len(examples))
    S = encoder.image_size
    if encoder.embed_dim != cfg.features:
        raise ConfigError(f"CLIP {encoder.name} gives {encoder.embed_dim}-d embeddings, but model.clip {cfg.clip} "
                          f"heads take {cfg.features}-d ones")
    tiles = cfg.kind.tiles_by_default
    tile = cfg.tile_size or 2 * S
    val_pass = ClipPass(encoder, inference_policy(cfg, S))
    train_pass = val_pass
    if tiles and cfg.random_crops:
        train_pass = ClipPass(encoder, CropPolicy(tiling=True, tile_size=tile),
                              random_crop_planner(tile, cfg.crops_per_image, cfg.seed, S),
                              key=f"random:{tile}:{cfg.crops_per_image}:{cfg.seed}")
    train_idx, val_idx = stratified_split(examples, cfg.val_fraction, cfg.seed)
    paths = [os.path.abspath(e.source) for e in examples]
    jobs = [(train_pass, [paths[i] for i in train_idx])]
    if val_idx:
        jobs.append((val_pass, [paths[i] for i in val_idx]))
    for clip_pass, part in jobs:
        rep = embed_files(store, [clip_pass], part, batch_size=cfg.batch_size, workers=cfg.workers, on_file=on_file)
        if report is not None:
            report.append(rep)
    row = register_passes(store, [val_pass])[0]
    failed = set()
    for rep in report or []:
        failed.update(p for p, _ in rep.failed)
    keep_train = [i for i in train_idx if paths[i] not in failed]
    keep_val = [i for i in val_idx if paths[i] not in failed]
    t_found, t_counts, t_views, _ = store.read_embeddings([paths[i] for i in keep_train], row, train_pass.key)
    v_found, v_counts, v_views, _ = store.read_embeddings([paths[i] for i in keep_val], row, val_pass.key)
    by_path = {p: i for i, p in enumerate(paths)}
    offsets = torch.tensor([0, *np.cumsum(t_counts).tolist()], dtype=torch.long)
    return Dataset(
        torch.from_numpy(t_views), offsets,
        torch.tensor([examples[by_path[p]].target for p in t_found], dtype=torch.float32), t_found,
        torch.from_numpy(v_views), v_counts,
        torch.tensor([examples[by_path[p]].target for p in v_found], dtype=torch.float32), v_found, facts)
