"""Training heads: the reference's configs and folder layouts, without the reference's bugs.

    config (YAML, the reference's keys + a few of ours)  -> TrainConfig
    data: folders of images (through the embedding store) or of .npy embeddings -> Dataset
    a stratified, seeded validation split (by image: all views of an image on one side)
    AdamW, cosine (or warm-up then constant) schedule, any batch size
    loss: weighted cross-entropy on LOGITS for classes; L1 (or MSE / Huber) for scores
    output: {base}-{rev}.safetensors (released layout) + .config.json + .csv + .png + .metrics.json

What the reference got wrong and this does not copy: cross-entropy applied to
softmax outputs, targets that only work at batch 1, no real validation split.
A training "step" in the config counts samples, as in the reference (steps 40000,
batch 1); optimizer steps are steps / batch.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .crops import CropPlan, CropPolicy, plan_crops
from .errors import ConfigError, WeightsError
from .heads import HeadConfig, HeadNet, save_head
from .images import IMAGE_EXTENSIONS

# ---------------------------------------------------------------- config

REFERENCE_CLIPS = {  # model.clip in the reference configs
    "CLIP": {"features": 768, "hidden": 1024, "clip_model": "openai/clip-vit-large-patch14-336"},
    "META": {"features": 1024, "hidden": 1280, "clip_model": None},  # ViT-H metaclip: .npy embeddings only
}
ALLOWED = {
    "model": {"base", "rev", "arch", "clip", "clip_model"},
    "train": {"lr", "steps", "batch", "cosine", "val_fraction", "seed", "warmup", "device", "early_stopping",
              "eval_every", "loss", "weight_decay", "save_every"},
    "data": {"random_crops", "crops_per_image", "tile_size", "workers", "batch_size"},
    "labels": None,  # integer keys, each {name, loss}
}
SCORE_LOSSES = ("l1", "mse", "huber")


@dataclass
class TrainConfig:
    base: str
    rev: str
    arch: str
    clip: str = "CLIP"
    clip_model: str | None = None  # the CLIP images are embedded with (hub id or folder)
    lr: float = 1e-6
    steps: int = 100_000  # samples, as in the reference
    batch: int = 1
    cosine: bool = True
    labels: dict[int, tuple[str, float]] = field(default_factory=dict)  # class -> (name, loss weight)
    val_fraction: float = 0.1
    seed: int = 0
    warmup: int | None = None  # samples; default: none with cosine, 5000 (as the reference) without
    device: str = "auto"
    early_stopping: int = 0  # evaluations without improvement before stopping; 0 = never
    eval_every: int | None = None  # optimizer steps; default: about 25 evaluations per run
    loss: str | None = None  # score heads: l1 (default), mse or huber
    weight_decay: float = 0.01
    save_every: int | None = None  # optimizer steps between checkpoints; default: at every evaluation
    random_crops: bool = True  # class heads on images: random tile-sized crops, as the reference
    crops_per_image: int = 4
    tile_size: int | None = None  # default 2 x the CLIP input size
    workers: int = 2
    batch_size: int | None = None  # CLIP views per forward when embedding

    @property
    def name(self) -> str:
        return f"{self.base}-{self.rev}"

    @property
    def features(self) -> int:
        return REFERENCE_CLIPS[self.clip]["features"]

    @property
    def hidden(self) -> int:
        return REFERENCE_CLIPS[self.clip]["hidden"]

    @property
    def outputs(self) -> int:
        return 1 if self.arch == "score" else len(self.labels)

    @property
    def optimizer_steps(self) -> int:
        return max(1, self.steps // self.batch)

    def head_config(self) -> HeadConfig:
        labels = {str(k): name for k, (name, _) in sorted(self.labels.items())} if self.arch == "class" else None
        return HeadConfig(name=self.base, rev=self.rev, arch=self.arch, labels=labels, features=self.features,
                          hidden=self.hidden, outputs=self.outputs)


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> TrainConfig:
    """Read a reference-format YAML (with our optional keys); unknown or contradictory keys are errors."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping with 'model:' and 'train:' sections")
    return parse_config(data, str(path), overrides)


def parse_config(data: dict, source: str = "config", overrides: dict | None = None) -> TrainConfig:
    unknown = set(data) - set(ALLOWED)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(ALLOWED)}")
    for section, allowed in ALLOWED.items():
        body = data.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: '{section}' must be a mapping")
        if allowed is not None:
            bad = set(body) - allowed
            if bad:
                raise ConfigError(f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in sorted(bad))}; "
                                  f"allowed in {section}: {', '.join(sorted(allowed))}")
    model = data.get("model")
    if not model:
        raise ConfigError(f"{source}: the 'model' section is required (base, rev, arch)")
    arch = model.get("arch")
    if arch not in ("score", "class"):
        raise ConfigError(f"{source}: model.arch must be 'score' or 'class', not {arch!r}")
    clip = model.get("clip", "CLIP")
    if clip not in REFERENCE_CLIPS:
        raise ConfigError(f"{source}: model.clip must be CLIP or META (the reference's names), not {clip!r}; "
                          "to embed images with another CLIP use model.clip_model")
    train = data.get("train") or {}
    kw: dict = {}
    for key in ("lr", "weight_decay", "val_fraction"):
        if key in train:
            kw[key] = _number(train[key], f"train.{key}", source, float)
    for key in ("steps", "batch", "seed", "warmup", "early_stopping", "eval_every", "save_every"):
        if key in train and train[key] is not None:
            kw[key] = _number(train[key], f"train.{key}", source, int)
    for key in ("cosine",):
        if key in train:
            kw[key] = bool(train[key])
    for key in ("device", "loss"):
        if key in train:
            kw[key] = str(train[key])
    d = data.get("data") or {}
    if "random_crops" in d:
        kw["random_crops"] = bool(d["random_crops"])
    for key in ("crops_per_image", "tile_size", "workers", "batch_size"):
        if key in d and d[key] is not None:
            kw[key] = _number(d[key], f"data.{key}", source, int)
    labels = {}
    raw_labels = data.get("labels") or {}
    for k, v in raw_labels.items():
        try:
            idx = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: label keys must be class numbers (0, 1, ...), not {k!r}") from None
        v = v or {}
        if not isinstance(v, dict) or set(v) - {"name", "loss"}:
            raise ConfigError(f"{source}: labels.{k} takes 'name' and 'loss' (the class weight)")
        labels[idx] = (str(v.get("name", idx)), _number(v.get("loss", 1.0), f"labels.{k}.loss", source, float))
    cfg = TrainConfig(base=str(model.get("base", "unknown")), rev=str(model.get("rev", "v0.0")), arch=arch, clip=clip,
                      clip_model=model.get("clip_model"), labels=labels, **kw)
    if overrides:
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    validate(cfg, source)
    return cfg


def _number(value, what: str, source: str, kind):
    try:
        n = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {what} must be a number, not {value!r}") from None
    if kind is float and not math.isfinite(n):
        raise ConfigError(f"{source}: {what} must be finite")
    return n


def validate(cfg: TrainConfig, source: str = "config") -> None:
    if cfg.lr <= 0:
        raise ConfigError(f"{source}: train.lr must be positive")
    if cfg.steps < 1 or cfg.batch < 1:
        raise ConfigError(f"{source}: train.steps and train.batch must be at least 1")
    if cfg.batch > cfg.steps:
        raise ConfigError(f"{source}: train.batch ({cfg.batch}) is larger than train.steps ({cfg.steps}); "
                          "steps count samples, as in the reference")
    if not 0 <= cfg.val_fraction < 1:
        raise ConfigError(f"{source}: train.val_fraction must be in [0, 1)")
    if cfg.warmup is not None and not 0 <= cfg.warmup < cfg.steps:
        raise ConfigError(f"{source}: train.warmup ({cfg.warmup}) must be below train.steps ({cfg.steps})")
    if cfg.arch == "score":
        if cfg.labels:
            raise ConfigError(f"{source}: a score model has no labels; remove 'labels' or use arch: class")
        if cfg.loss not in (None, *SCORE_LOSSES):
            raise ConfigError(f"{source}: train.loss for a score model is one of {', '.join(SCORE_LOSSES)}")
    else:
        if cfg.loss not in (None, "ce", "cross_entropy"):
            raise ConfigError(f"{source}: a class model trains with weighted cross-entropy; remove train.loss")
        if cfg.labels and sorted(cfg.labels) != list(range(len(cfg.labels))):
            raise ConfigError(f"{source}: labels must be 0..K-1 without gaps, got {sorted(cfg.labels)}")
        if cfg.labels and len(cfg.labels) < 2:
            raise ConfigError(f"{source}: a class model needs at least 2 labels")
        if any(w < 0 for _, w in cfg.labels.values()):
            raise ConfigError(f"{source}: label loss weights must not be negative")
    if cfg.crops_per_image < 1:
        raise ConfigError(f"{source}: data.crops_per_image must be at least 1")


# ---------------------------------------------------------------- data


@dataclass
class Example:
    source: str  # image path or .npy path
    target: float  # class index, or the normalised score
    folder: str  # the category folder it came from (stratum)


def scan_folders(root: str | os.PathLike, arch: str, kind: str) -> tuple[list[Example], dict]:
    """The reference layout: one folder per category, named by its label ('0_reg', '1_chroma') or score ('0'..'10').

    kind: 'images' or 'npy'. Returns examples and facts (classes found, score range).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data folder {root} not found")
    exts = IMAGE_EXTENSIONS if kind == "images" else {".npy"}
    examples: list[Example] = []
    raw_values: dict[str, float] = {}
    for cat in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        prefix = cat.name.split("_", 1)[0]
        try:
            value = int(prefix) if arch == "class" else float(prefix)
        except ValueError:
            raise ConfigError(f"{cat}: category folders must start with their {'class number' if arch == 'class' else 'score'} "
                              f"(like 0_reg, 1_chroma{'' if arch == 'class' else ', or 0..10'}); rename or move it") from None
        files = sorted(f for f in cat.rglob("*") if f.is_file() and f.suffix.lower() in exts)
        raw_values[cat.name] = value
        examples += [Example(str(f), value, cat.name) for f in files]
    if not examples:
        raise ConfigError(f"no {'images' if kind == 'images' else '.npy embeddings'} in category folders under {root}")
    facts: dict = {}
    if arch == "class":
        classes = sorted({int(e.target) for e in examples})
        if classes != list(range(len(classes))):
            raise ConfigError(f"{root}: classes must be 0..K-1 without gaps; found {classes}")
        facts["classes"] = classes
    else:
        lo, hi = min(raw_values.values()), max(raw_values.values())
        if hi == lo:
            raise ConfigError(f"{root}: score folders all have the value {lo}; need at least two different scores")
        for e in examples:  # min-max normalised to [0, 1]
            e.target = (e.target - lo) / (hi - lo)
        facts["score_range"] = (lo, hi)
    return examples, facts


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
    examples, facts = scan_folders(root, cfg.arch, "npy")
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


def load_image_dataset(cfg: TrainConfig, root: Path, store, encoder, on_file=None, report=None) -> Dataset:
    """Embed the images through the store (each image once), then assemble train/val views.

    Training views: class heads get `crops_per_image` seeded random tile crops of
    images large enough (the whole image otherwise); score heads the whole image.
    Validation views: exactly what inference uses (five tiles for classes).
    """
    from .jobs import EmbedTarget, embed_files
    from .store import policy_key

    examples, facts = scan_folders(root, cfg.arch, "images")
    S = encoder.image_size
    tile = cfg.tile_size or 2 * S
    row = store.register_encoder(encoder.identity, encoder.name, getattr(encoder, "source", encoder.name), S,
                                 encoder.embed_dim)
    if encoder.embed_dim != cfg.features:
        raise ConfigError(f"CLIP {encoder.name} gives {encoder.embed_dim}-d embeddings, but model.clip {cfg.clip} "
                          f"heads take {cfg.features}-d ones")
    val_policy = CropPolicy(tiling=cfg.arch == "class", tile_size=tile if cfg.arch == "class" else None)
    val_policy = val_policy.resolved(S)
    if cfg.arch == "class" and cfg.random_crops:
        train_target = EmbedTarget(encoder, CropPolicy(tiling=True, tile_size=tile),
                                   f"random:{tile}:{cfg.crops_per_image}:{cfg.seed}", row,
                                   random_crop_planner(tile, cfg.crops_per_image, cfg.seed, S))
    else:
        train_target = EmbedTarget(encoder, val_policy, policy_key(val_policy), row)
    val_target = EmbedTarget(encoder, val_policy, policy_key(val_policy), row)
    train_idx, val_idx = stratified_split(examples, cfg.val_fraction, cfg.seed)
    paths = [os.path.abspath(e.source) for e in examples]
    jobs = [(train_target, [paths[i] for i in train_idx])]
    if val_idx:
        jobs.append((val_target, [paths[i] for i in val_idx]))
    for target, part in jobs:
        rep = embed_files(store, [target], part, batch_size=cfg.batch_size, workers=cfg.workers, on_file=on_file)
        if report is not None:
            report.append(rep)
    failed = set()
    for rep in report or []:
        failed.update(p for p, _ in rep.failed)
    keep_train = [i for i in train_idx if paths[i] not in failed]
    keep_val = [i for i in val_idx if paths[i] not in failed]
    t_found, t_counts, t_views, _ = store.read_embeddings([paths[i] for i in keep_train], row, train_target.key)
    v_found, v_counts, v_views, _ = store.read_embeddings([paths[i] for i in keep_val], row, val_target.key)
    by_path = {p: i for i, p in enumerate(paths)}
    offsets = torch.tensor([0, *np.cumsum(t_counts).tolist()], dtype=torch.long)
    return Dataset(
        torch.from_numpy(t_views), offsets,
        torch.tensor([examples[by_path[p]].target for p in t_found], dtype=torch.float32), t_found,
        torch.from_numpy(v_views), v_counts,
        torch.tensor([examples[by_path[p]].target for p in v_found], dtype=torch.float32), v_found, facts)


# ---------------------------------------------------------------- metrics


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x):
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x), dtype=np.float64)
        r[order] = np.arange(len(x))
        # average ranks of ties
        vals, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return (sums / counts)[inv]

    return pearson(ranks(a), ranks(b))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def class_metrics(pred: np.ndarray, true: np.ndarray, labels: list[str]) -> dict:
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(true, pred):
        cm[int(t), int(p)] += 1
    out: dict = {"n_val": int(len(true)), "accuracy": float((pred == true).mean()) if len(true) else float("nan")}
    f1s, ps, rs = [], [], []
    for i, name in enumerate(labels):
        tp = cm[i, i]
        prec = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        rec = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        key = name.lower().replace(" ", "_")
        out[f"precision_{key}"], out[f"recall_{key}"], out[f"f1_{key}"] = float(prec), float(rec), float(f1)
        ps.append(prec), rs.append(rec), f1s.append(f1)
    out["precision_macro"], out["recall_macro"], out["f1_macro"] = (float(np.mean(ps)), float(np.mean(rs)),
                                                                    float(np.mean(f1s)))
    out["chance_accuracy"] = float(max(np.bincount(true.astype(int), minlength=k)) / len(true)) if len(true) else 0.0
    out["labels"] = labels
    out["confusion_matrix"] = cm.tolist()
    return out


def score_metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    return {"n_val": int(len(true)), "mae": float(np.abs(pred - true).mean()) if len(true) else float("nan"),
            "rmse": float(np.sqrt(((pred - true) ** 2).mean())) if len(true) else float("nan"),
            "spearman": spearman(pred, true) if len(true) > 1 else float("nan"),
            "pearson": pearson(pred, true)}


@torch.no_grad()
def evaluate(net: HeadNet, cfg: TrainConfig, views: torch.Tensor, counts: list[int], targets: torch.Tensor,
             combine: str = "mean") -> tuple[float, dict, np.ndarray]:
    """Validation as inference does it: per-view outputs reduced per image. Returns (loss, metrics, predictions)."""
    from .pipeline import reduce_segments

    if not counts:
        return float("nan"), {"n_val": 0}, np.zeros(0)
    net.eval()
    out = net(views).float().cpu()
    per_image = reduce_segments(out, counts, combine)
    if cfg.arch == "class":
        probs = per_image.clamp_min(1e-7)
        weights = class_weights(cfg)
        tgt = targets.long()
        nll = -probs.log().gather(1, tgt[:, None])[:, 0]
        w = weights[tgt]
        loss = float((nll * w).sum() / w.sum())
        pred = per_image.argmax(dim=1).numpy()
        metrics = class_metrics(pred, tgt.numpy(), [cfg.labels[i][0] for i in range(cfg.outputs)])
        return loss, metrics, per_image.numpy()
    pred = per_image[:, 0]
    loss = float(score_loss(cfg)(pred, targets))
    return loss, score_metrics(pred.numpy(), targets.numpy()), pred.numpy()


def class_weights(cfg: TrainConfig) -> torch.Tensor:
    return torch.tensor([cfg.labels[i][1] for i in range(cfg.outputs)], dtype=torch.float32)


def score_loss(cfg: TrainConfig):
    return {"l1": torch.nn.L1Loss(), "mse": torch.nn.MSELoss(), "huber": torch.nn.HuberLoss(delta=0.1)}[cfg.loss or "l1"]


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    weights: Path
    config: Path
    log: Path
    curves: Path
    metrics_path: Path
    metrics: dict
    steps_done: int
    stopped_early: bool


def make_scheduler(opt, cfg: TrainConfig):
    total = cfg.optimizer_steps
    warm = cfg.warmup if cfg.warmup is not None else (0 if cfg.cosine else 5000)
    warm_steps = min(total - 1, max(0, warm // cfg.batch))
    sched = torch.optim.lr_scheduler
    if cfg.cosine:
        cosine = sched.CosineAnnealingLR(opt, T_max=max(1, total - warm_steps))
        if warm_steps:
            return sched.SequentialLR(opt, [sched.LinearLR(opt, 0.1, 1.0, total_iters=warm_steps), cosine],
                                      milestones=[warm_steps])
        return cosine
    return sched.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=max(1, warm_steps))


def _checkpoint_path(out: Path, cfg: TrainConfig) -> Path:
    return out / f"{cfg.name}.checkpoint.safetensors"


def save_checkpoint(path: Path, net, opt, sched, gen: torch.Generator, state: dict, best: dict | None) -> None:
    """Everything to resume, as safetensors (tensors) + JSON metadata: no pickles."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if best is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
    opt_state = opt.state_dict()
    names = [n for n, _ in net.named_parameters()]
    for idx, st in opt_state["state"].items():
        for key, value in st.items():
            tensors[f"optim.{names[idx]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().float()
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"state": json.dumps(state), "scheduler": json.dumps(sched.state_dict(), default=float),
            "param_groups": json.dumps(opt_state["param_groups"])}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(path: Path, net, opt, sched, gen: torch.Generator) -> tuple[dict, dict | None]:
    from safetensors import safe_open

    from .weights import check_safetensors_file

    check_safetensors_file(path, "checkpoint")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    if "state" not in meta:
        raise WeightsError(f"{path} is not a cityclf training checkpoint")
    try:
        net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise WeightsError(f"{path}: the checkpoint is for another head shape ({e}); check the config") from None
    names = [n for n, _ in net.named_parameters()]
    state = {}
    for idx, name in enumerate(names):
        st = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{name}.")}
        if st:
            if "step" in st:
                st["step"] = st["step"].reshape(())
            state[idx] = st
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    sched.load_state_dict(json.loads(meta["scheduler"]))
    gen.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return json.loads(meta["state"]), best


def train(cfg: TrainConfig, data: Dataset, out: str | os.PathLike, resume: str | os.PathLike | None = None,
          overwrite: bool = False, on_step: Callable[[int, int, dict], None] | None = None,
          log: Callable[[str], None] = print, progress: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train a head on `data`; write weights, config, CSV log, curves and metrics into `out`.

    `progress(step, total)` is called every optimizer step, `on_step(step, total,
    metrics)` at every evaluation.
    """
    from .encoders import pick_device

    device = pick_device(cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{cfg.name}.safetensors"
    files = [weights, weights.with_name(f"{cfg.name}.config.json"), out / f"{cfg.name}.csv",
             out / f"{cfg.name}.png", out / f"{cfg.name}.metrics.json"]
    if not overwrite and not resume and any(f.exists() for f in files):
        raise ConfigError(f"{weights} (or its log/metrics) already exists; choose a new model.rev, another --out, "
                          "or --overwrite")
    if data.n_train == 0:
        raise ConfigError("no training examples left after the validation split")
    if cfg.arch == "class":
        present = set(int(t) for t in data.train_targets.tolist())
        if not cfg.labels:
            cfg.labels = {i: (str(i), 1.0) for i in range(int(max(present)) + 1)}
        if max(present) >= cfg.outputs:
            raise ConfigError(f"the data has class {int(max(present))}, but the config's labels stop at "
                              f"{cfg.outputs - 1}; add it to 'labels'")
    torch.manual_seed(cfg.seed)
    net = HeadNet(cfg.features, cfg.hidden, cfg.outputs).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = make_scheduler(opt, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    total = cfg.optimizer_steps
    eval_every = cfg.eval_every or max(1, total // 25)
    save_every = cfg.save_every or eval_every
    ckpt = _checkpoint_path(out, cfg)
    state = {"step": 0, "order": None, "pos": 0, "best": None, "best_step": 0, "bad_evals": 0, "history": []}
    best_weights = None
    if resume:
        resume_path = Path(resume) if str(resume) not in ("", "auto") else ckpt
        if not resume_path.exists():
            raise ConfigError(f"nothing to resume: {resume_path} does not exist")
        state, best_weights = load_checkpoint(resume_path, net, opt, sched, gen)
        log(f"resumed from {resume_path} at step {state['step']} of {total}")
    weights_t = class_weights(cfg).to(device) if cfg.arch == "class" else None
    ce = torch.nn.CrossEntropyLoss(weight=weights_t)
    train_views, targets_dev = data.train_views.to(device), data.train_targets.to(device)
    val_views = data.val_views.to(device)
    loss_fn = score_loss(cfg) if cfg.arch == "score" else None
    n = data.n_train
    counts = (data.train_offsets[1:] - data.train_offsets[:-1])
    csv_path = files[2]
    new_log = not (resume and csv_path.exists())
    log_file = open(csv_path, "w" if new_log else "a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(["step", "samples", "lr", "train_loss", "val_loss", "val_metric"])
    running, running_n = 0.0, 0
    stopped_early = False
    metric_name = "accuracy" if cfg.arch == "class" else "mae"
    try:
        while state["step"] < total:
            if state["order"] is None or state["pos"] >= n:
                state["order"] = torch.randperm(n, generator=gen).tolist()
                state["pos"] = 0
            take = state["order"][state["pos"] : state["pos"] + cfg.batch]
            if len(take) < cfg.batch and n >= cfg.batch:  # drop the ragged tail, as the reference's drop_last
                state["order"] = None
                continue
            state["pos"] += len(take)
            idx = torch.tensor(take)
            view = data.train_offsets[idx] + (torch.rand(len(take), generator=gen) * counts[idx]).long()
            x = train_views[view.to(device)]
            y = targets_dev[idx.to(device)]
            net.train()
            z = net.logits(x)
            if cfg.arch == "class":
                loss = ce(z, y.long())
            else:
                loss = loss_fn(net.activate(z)[:, 0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            state["step"] += 1
            running += loss.item() * len(take)
            running_n += len(take)
            step = state["step"]
            if progress:
                progress(step, total)
            if step % eval_every == 0 or step == total:
                val_loss, metrics, _ = evaluate(net, cfg, val_views, data.val_counts, data.val_targets)
                train_loss = running / max(running_n, 1)
                running, running_n = 0.0, 0
                lr = sched.get_last_lr()[0]
                metric = metrics.get(metric_name, float("nan"))
                writer.writerow([step, step * cfg.batch, f"{lr:.6g}", f"{train_loss:.6g}", f"{val_loss:.6g}",
                                 f"{metric:.6g}"])
                log_file.flush()
                state["history"].append([step, train_loss, val_loss, metric])
                key = val_loss if data.val_counts else train_loss
                if state["best"] is None or key < state["best"] - 1e-9:
                    state["best"], state["best_step"], state["bad_evals"] = key, step, 0
                    best_weights = {k: v.clone() for k, v in net.state_dict().items()}
                else:
                    state["bad_evals"] += 1
                if on_step:
                    on_step(step, total, {"train_loss": train_loss, "val_loss": val_loss, metric_name: metric, "lr": lr})
                if cfg.early_stopping and state["bad_evals"] >= cfg.early_stopping:
                    log(f"early stop at step {step}: no better validation loss for {cfg.early_stopping} evaluations "
                        f"(best at step {state['best_step']})")
                    stopped_early = True
                    break
            if step % save_every == 0 and step < total:
                save_checkpoint(ckpt, net, opt, sched, gen, state, best_weights)
    except KeyboardInterrupt:
        save_checkpoint(ckpt, net, opt, sched, gen, state, best_weights)
        log_file.close()
        log(f"interrupted at step {state['step']}; resume with --resume (checkpoint {ckpt})")
        raise
    log_file.close()
    if cfg.early_stopping and best_weights is not None:
        net.load_state_dict(best_weights)  # the best validation loss, not the last
    net.eval()
    save_head(net, cfg.head_config(), weights, overwrite=True)
    val_loss, metrics, _ = evaluate(net, cfg, val_views, data.val_counts, data.val_targets)
    metrics = {"name": cfg.name, "arch": cfg.arch, "val_loss": val_loss, **metrics, "n_train": n,
               "steps": state["step"], "samples": state["step"] * cfg.batch, "stopped_early": stopped_early,
               **({"score_range": list(data.facts["score_range"])} if "score_range" in data.facts else {})}
    files[4].write_text(json.dumps(metrics, indent=2, default=float) + "\n", encoding="utf-8")
    from .grid import line_chart

    hist = state["history"]
    line_chart({"train loss": [(h[0], h[1]) for h in hist], "validation loss": [(h[0], h[2]) for h in hist]},
               {f"validation {metric_name}": [(h[0], h[3]) for h in hist]}, files[3],
               title=f"{cfg.name}: loss and validation {metric_name} by optimizer step")
    if ckpt.exists():
        ckpt.unlink()  # finished: the checkpoint is ours and no longer needed
    return TrainResult(weights, files[1], files[2], files[3], files[4], metrics, state["step"], stopped_early)


def format_metrics(metrics: dict) -> str:
    if metrics.get("arch") == "class":
        labels = metrics["labels"]
        lines = [f"validation: {metrics['n_val']} images, accuracy {metrics['accuracy']:.3f} "
                 f"(chance {metrics['chance_accuracy']:.3f}), F1 macro {metrics['f1_macro']:.3f}"]
        for name in labels:
            key = name.lower().replace(" ", "_")
            lines.append(f"  {name:>24}: precision {metrics['precision_' + key]:.3f}  recall "
                         f"{metrics['recall_' + key]:.3f}  F1 {metrics['f1_' + key]:.3f}")
        width = max(len(x) for x in labels)
        lines.append("  confusion matrix (rows: true, columns: predicted)")
        lines.append("  " + " " * (width + 2) + " ".join(f"{x[:8]:>8}" for x in labels))
        for name, row in zip(labels, metrics["confusion_matrix"]):
            lines.append(f"  {name:>{width}}  " + " ".join(f"{v:>8}" for v in row))
        return "\n".join(lines)
    return (f"validation: {metrics['n_val']} images, MAE {metrics['mae']:.4f}, RMSE {metrics['rmse']:.4f}, "
            f"Spearman {metrics['spearman']:.3f}, Pearson {metrics['pearson']:.3f}")


__all__ = [
    "Dataset",
    "TrainConfig",
    "TrainResult",
    "class_metrics",
    "data_kind",
    "evaluate",
    "format_metrics",
    "load_config",
    "load_image_dataset",
    "load_npy_dataset",
    "parse_config",
    "pearson",
    "random_crop_planner",
    "scan_folders",
    "score_metrics",
    "spearman",
    "stratified_split",
    "train",
]
