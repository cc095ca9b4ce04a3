"""`cityclf pixiv eval`: (a), (b), (c) and the metadata baseline on the same splits and seeds.

For each split in eval.splits and seed in eval.seeds: the split is made once;
the target is fitted on its training works; the baseline and each model are
trained on the same training works and scored on the same test works. Heads
are saved under OUT/runs/<split>-s<seed>/ and scored after loading them back
the way `cityclf score` does.

Writes OUT/ablation.json: flat keys `<split>.<model>.<metric>` (mean over
seeds) and `<split>.<model>.<metric>.std`, plus `<split>.artists_on_both_sides`;
OUT/ablation.png: predicted vs actual on the test works (first seed), one
panel per split and model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..annotate import font
from ..errors import ConfigError
from ..grid import BG, FG, MUTED
from ..loading.catalogue import load_head
from ..metrics import spearman
from .config import PixivSettings
from .evaluate import MetadataBaseline, popularity_metrics
from .splits import artists_on_both_sides, make_split
from .targets import Target
from .training import PixivData, describe_split, fit_and_train, load_data, predict

BASELINE = "metadata-baseline"
SHOWN = ("spearman", "pearson", "mae", "top10_precision")


def run_ablation(settings: PixivSettings, out: str | os.PathLike, overwrite: bool = False,
                 log: Callable[[str], None] = print, data: PixivData | None = None) -> dict:
    out = Path(out)
    files = [out / "ablation.json", out / "ablation.png"]
    if not overwrite and (any(f.exists() for f in files) or (out / "runs").exists()):
        raise ConfigError(f"{out} already holds an ablation (ablation.json or runs/); choose another --out or "
                          "give --overwrite")
    data = data or load_data(settings)
    runs: dict[tuple[str, str], list[dict]] = {}
    points: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    table: dict = {"works": len(data.records), "target": settings.target, "seeds": list(settings.eval_seeds)}
    for split_name in settings.eval_splits:
        for seed in settings.eval_seeds:
            split = make_split(split_name, data.records, settings.test_fraction, settings.val_fraction, seed)
            log(describe_split(data, split))
            table[f"{split_name}.artists_on_both_sides"] = artists_on_both_sides(data.records, split)
            rec = data.records
            target = Target.fit(settings.target, rec.subset(split.train), alpha=settings.alpha, k=settings.k)
            test = split.test[np.isfinite(target.score(rec.subset(split.test)))]
            y_test = target.score(rec.subset(test))
            fit_idx = np.concatenate([split.train, split.val])
            fit_idx = fit_idx[np.isfinite(target.score(rec.subset(fit_idx)))]
            baseline = MetadataBaseline().fit(rec.subset(fit_idx), target.score(rec.subset(fit_idx)))
            predictions = {BASELINE: baseline.predict(rec.subset(test))}
            for arch in settings.eval_models:
                result, fitted = fit_and_train(settings, data, split, arch, out / "runs" / f"{split_name}-s{seed}",
                                               base=arch, overwrite=True, log=lambda m: None)
                if fitted.to_dict() != target.to_dict():
                    raise ConfigError("internal: the target was fitted differently for one model")
                predictions[arch] = predict(load_head(result.weights), data, test)[:, 0]
            for model, pred in predictions.items():
                m = popularity_metrics(pred, y_test, rec.subset(test))
                runs.setdefault((split_name, model), []).append(m)
                points.setdefault((split_name, model), (pred, y_test))
                log(f"  {split_name} seed {seed} {model:>22}: Spearman {m['spearman']:.3f}, Pearson "
                    f"{m['pearson']:.3f}, MAE {m['mae']:.3f}, top-10% precision {m['top10_precision']:.2f}")
    for (split_name, model), ms in runs.items():
        for key in ms[0]:
            values = np.array([m[key] for m in ms], dtype=np.float64)
            finite = values[np.isfinite(values)]
            table[f"{split_name}.{model}.{key}"] = float(finite.mean()) if len(finite) else float("nan")
            if key in SHOWN and len(ms) > 1:
                table[f"{split_name}.{model}.{key}.std"] = float(finite.std()) if len(finite) else float("nan")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "ablation.json", table)
    scatter_panels(points, out / "ablation.png")
    return table


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in data.items()}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def format_table(table: dict, splits, models) -> str:
    """The ablation as a Markdown table: one row per split and model."""
    lines = ["| split | model | Spearman | Pearson | MAE | top-10% precision |", "|---|---|---|---|---|---|"]
    for split_name in splits:
        for model in [*models, BASELINE]:
            cells = []
            for key in SHOWN:
                v = table.get(f"{split_name}.{model}.{key}")
                sd = table.get(f"{split_name}.{model}.{key}.std")
                cells.append("n/a" if v is None or v != v else f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else ""))
            lines.append(f"| {split_name} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scatter_panels(points: dict, out: Path, panel: int = 220) -> Path:
    """Predicted (y) vs actual (x) test scores, a panel per (split, model), as a PNG (Pillow only)."""
    from PIL import Image, ImageDraw

    splits = list(dict.fromkeys(s for s, _ in points))
    models = list(dict.fromkeys(m for _, m in points))
    pad, head = 28, 36
    img = Image.new("RGB", (len(models) * (panel + pad) + pad, len(splits) * (panel + head + pad) + pad), BG)
    draw = ImageDraw.Draw(img)
    small = font(11)
    for r, split_name in enumerate(splits):
        for c, model in enumerate(models):
            if (split_name, model) not in points:
                continue
            pred, true = points[(split_name, model)]
            x0, y0 = pad + c * (panel + pad), pad + r * (panel + head + pad) + head
            draw.text((x0, y0 - head + 4), f"{split_name} / {model}", font=small, fill=FG)
            rho = _rho(pred, true)
            draw.text((x0, y0 - head + 18), f"Spearman {rho:.3f}  (x: actual, y: predicted)", font=small, fill=MUTED)
            draw.rectangle([x0, y0, x0 + panel, y0 + panel], outline=MUTED)
            lo = float(min(np.min(true), np.min(pred), 0.0))
            hi = float(max(np.max(true), np.max(pred), 1.0))
            span = hi - lo or 1.0
            fx = lambda v: x0 + panel * (v - lo) / span  # noqa: E731
            fy = lambda v: y0 + panel * (1 - (v - lo) / span)  # noqa: E731
            draw.line([fx(lo), fy(lo), fx(hi), fy(hi)], fill=(70, 70, 80))
            for p, t in zip(pred, true):
                x, y = fx(t), fy(p)
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(86, 156, 214))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out


def _rho(pred, true) -> float:
    return spearman(np.asarray(pred), np.asarray(true)) if len(true) > 1 else float("nan")


__all__ = ["BASELINE", "format_table", "run_ablation", "scatter_panels"]
