"""Training heads: the reference's configs and folder layouts, without the reference's bugs.

    config.py       YAML (the reference's keys + a few of ours) -> TrainConfig, validated
    data.py         category folders -> examples; seeded stratified split; embeddings via the store or .npy
    embedding.py    the CLIP a run embeds with (loaded and recorded), its images embedded through a locked store
    evaluate.py     validation as inference does it (views reduced per image), metrics from the head's kind
    schedule.py     cosine / warm-up learning-rate schedules
    checkpoints.py  resume bit for bit: safetensors + JSON, no pickles
    loop.py         the Trainer
    outputs.py      the files a run writes

The loss and metrics are the head's kind's (kinds/): weighted cross-entropy on
LOGITS for classifiers (the reference applied it to softmax outputs), L1 (or
MSE / Huber) for scores. What the reference got wrong and this does not copy:
that, targets that only work at batch 1, no real validation split.
"""

from ..metrics import class_metrics, pearson, score_metrics, spearman
from .checkpoints import load_checkpoint, save_checkpoint
from .config import REFERENCE_CLIPS, TrainConfig, load_config, parse_config
from .data import (
    Dataset,
    Example,
    data_kind,
    load_image_dataset,
    load_npy_dataset,
    random_crop_planner,
    scan_folders,
    stratified_split,
)
from .evaluate import evaluate, format_metrics
from .loop import Trainer, train
from .outputs import TrainResult

__all__ = [
    "REFERENCE_CLIPS",
    "Dataset",
    "Example",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "class_metrics",
    "data_kind",
    "evaluate",
    "format_metrics",
    "load_checkpoint",
    "load_config",
    "load_image_dataset",
    "load_npy_dataset",
    "parse_config",
    "pearson",
    "random_crop_planner",
    "save_checkpoint",
    "scan_folders",
    "score_metrics",
    "spearman",
    "stratified_split",
    "train",
]
