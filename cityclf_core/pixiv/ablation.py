"""`cityclf pixiv eval`: (a), (b), (c), the linear probe and the metadata baseline on the same splits and seeds.

For each split in eval.splits and seed in eval.seeds: the split is made once;
the target is fitted on its training works; the baselines and each model
(with each loss of eval.losses) are trained on the same training works and
scored on the same test works. Heads are saved under OUT/runs/<split>-s<seed>/
and scored after loading them back the way `cityclf score` does.

Writes OUT/ablation.json: flat keys `<split>.<model>.<metric>` (mean over
seeds) and `<split>.<model>.<metric>.std`; `<split>.<model>.spearman.ci`, the
95% interval of the seed-mean Spearman from resampling the test works BY
ARTIST; `<split>.diff.<m1>.vs.<m2>` with `.ci` and `.within_noise` (paired:
the same resampled works for both); the learned log-variances of the
multi-task heads (`<split>.<model>.log_var.<task>`, `.balance.<task>`);
`<split>.<model>.reliability` (by decile of the predicted percentile: mean
predicted and actual percentile); `<split>.artists_on_both_sides`.
OUT/ablation.png: predicted vs actual on the test works (first seed), one
panel per split and model; OUT/reliability.png: the reliability by decile,
pooled over the seeds.

`evaluate_head` scores one saved head on the config's split, and refuses when
that split's test works include works the head was trained on.
"""

from __future__ import annotations

import itertools
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
from .evaluate import MetadataBaseline, RidgeProbe, bootstrap_draws, interval, popularity_metrics
from .splits import Split, artists_on_both_sides, make_split
from .training import PixivData, describe_split, fit_and_train, fit_target, ids_digest, load_data, predict, views_of

BASELINE = "metadata-baseline"
PROBE = "ridge-probe"
SHOWN = ("spearman", "spearman_within_artist", "spearman_between_artist", "top10_precision", "mae")
TASKS = ("popularity", "sanity", "ai")
DECILES = 10


def model_name(arch: str, loss: str) -> str:
    return arch if loss == "mse" else f"{arch}+{loss}"


def _embeddings(data: PixivData, idx: np.ndarray) -> np.ndarray:
    views = views_of(data, idx)
    try:
        parts = [x.numpy() for _, x in views.chunks()]
    finally:
        views.close()
    return np.concatenate(parts) if parts else np.zeros((0, data.encoder.embed_dim), np.float32)


def percentile_among(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Percentile (0..100) of each value among the reference values (the share of them it is above)."""
    ref = np.sort(np.asarray(reference, np.float64))
    lo = np.searchsorted(ref, values, side="left")
    hi = np.searchsorted(ref, values, side="right")
    return 100.0 * (lo + hi) / (2.0 * max(len(ref), 1))


def reliability(predicted_pct: np.ndarray, actual_pct: np.ndarray) -> list[list[float]]:
    """[mean predicted, mean actual percentile, works] per decile of the predicted percentile."""
    out = []
    bins = np.clip((np.asarray(predicted_pct) // (100 / DECILES)).astype(int), 0, DECILES - 1)
    for d in range(DECILES):
        mine = bins == d
        if mine.any():
            out.append([float(predicted_pct[mine].mean()), float(actual_pct[mine].mean()), int(mine.sum())])
    return out


def run_ablation(settings: PixivSettings, out: str | os.PathLike, overwrite: bool = False,
                 log: Callable[[str], None] = print, data: PixivData | None = None) -> dict:
    out = Path(out)
    files = [out / "ablation.json", out / "ablation.png", out / "reliability.png"]
    if not overwrite and (any(f.exists() for f in files) or (out / "runs").exists()):
        raise ConfigError(f"{out} already holds an ablation (ablation.json or runs/); choose another --out or "
                          "give --overwrite")
    data = data or load_data(settings)
    rec = data.records
    runs: dict[tuple[str, str], list[dict]] = {}
    points: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, int]] = {}
    tests: dict[str, list[dict]] = {}  # per split, per seed: test artists and every model's predictions
    calib: dict[tuple[str, str], list[np.ndarray]] = {}
    table: dict = {"works": len(rec), "target": settings.target,
                   "per_artist": settings.per_artist, "seeds": list(settings.eval_seeds),
                   "losses": list(settings.eval_losses), "bootstrap": settings.bootstrap}
    models = [model_name(a, loss) for loss in settings.eval_losses for a in settings.eval_models]
    for split_name in settings.eval_splits:
        for seed in settings.eval_seeds:
            split = make_split(split_name, rec, settings.test_fraction, settings.val_fraction, seed)
            log(describe_split(data, split))
            table[f"{split_name}.artists_on_both_sides"] = artists_on_both_sides(rec, split)
            target = fit_target(settings, rec.subset(split.train))
            test = split.test[np.isfinite(target.score(rec.subset(split.test)))]
            y_test = target.score(rec.subset(test))
            train = split.train[np.isfinite(target.score(rec.subset(split.train)))]
            val = split.val[np.isfinite(target.score(rec.subset(split.val)))]
            y_train = target.score(rec.subset(train))
            fit_idx = np.concatenate([train, val])
            baseline = MetadataBaseline().fit(rec.subset(fit_idx), target.score(rec.subset(fit_idx)))
            predictions = {BASELINE: baseline.predict(rec.subset(test))}
            probe = RidgeProbe().fit(_embeddings(data, train), y_train, _embeddings(data, val),
                                     target.score(rec.subset(val)))
            predictions[PROBE] = probe.predict(_embeddings(data, test))
            table[f"{split_name}.{PROBE}.lambda.s{seed}"] = probe.lam
            for loss in settings.eval_losses:
                for arch in settings.eval_models:
                    name = model_name(arch, loss)
                    result, fitted = fit_and_train(settings, data, split, arch, out / "runs" / f"{split_name}-s{seed}",
                                                   base=name, overwrite=True, log=lambda m: None, loss=loss)
                    if fitted.to_dict() != target.to_dict():
                        raise ConfigError("internal: the target was fitted differently for one model")
                    values = predict(load_head(result.weights), data, test)
                    predictions[name] = values[:, 0]
                    calib.setdefault((split_name, name), []).append(
                        np.stack([values[:, -1], percentile_among(y_test, y_train)], axis=1))
                    u = result.metrics.get("uncertainty")
                    if u:
                        runs.setdefault((split_name, name + "#u"), []).append(
                            {**{f"log_var.{t}": z for t, z in zip(TASKS, u["log_vars"])},
                             **{f"balance.{t}": b for t, b in zip(TASKS, u["balance"])}})
            tests.setdefault(split_name, []).append({"artists": rec.user_id[test], "y": y_test, "pred": predictions})
            for model, pred in predictions.items():
                m = popularity_metrics(pred, y_test, rec.subset(test))
                runs.setdefault((split_name, model), []).append(m)
                points.setdefault((split_name, model), (pred, y_test, seed))
                log(f"  {split_name} seed {seed} {model:>31}: Spearman {m['spearman']:.3f} (within artists "
                    f"{m['spearman_within_artist']:.3f}, between {m['spearman_between_artist']:.3f}), MAE "
                    f"{m['mae']:.3f}, top-10% precision {m['top10_precision']:.2f}")
    for (split_name, model), ms in runs.items():
        model = model.removesuffix("#u")
        for key in ms[0]:
            values = np.array([m[key] for m in ms], dtype=np.float64)
            finite = values[np.isfinite(values)]
            table[f"{split_name}.{model}.{key}"] = float(finite.mean()) if len(finite) else float("nan")
            if key in SHOWN and len(ms) > 1:
                table[f"{split_name}.{model}.{key}.std"] = float(finite.std()) if len(finite) else float("nan")
    for split_name, seeds in tests.items():
        table.update(_intervals(split_name, seeds, settings.bootstrap, [*models, PROBE, BASELINE]))
    for (split_name, model), parts in calib.items():
        both = np.concatenate(parts)
        table[f"{split_name}.{model}.reliability"] = reliability(both[:, 0], both[:, 1])
    table["models"] = [*models, PROBE, BASELINE]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ablation.json", table)
    scatter_panels(points, out / "ablation.png")
    reliability_panels(table, settings.eval_splits, models, out / "reliability.png")
    return table


def _intervals(split_name: str, seeds: list[dict], draws: int, models: list[str]) -> dict:
    """By-artist bootstrap of the seed-mean Spearman of each model, and of each pair's paired difference
    (`<split>.diff.<a>.vs.<b>` = Spearman of a - Spearman of b, a before b in `models`)."""
    if draws <= 0:
        return {}
    rng = np.random.default_rng(0)
    resamples = [bootstrap_draws(s["artists"], draws, rng) for s in seeds]
    boot = {}
    for model in models:
        per_seed = [[spearman(s["pred"][model][idx], s["y"][idx]) for idx in draws_] for s, draws_ in
                    zip(seeds, resamples)]
        boot[model] = np.nanmean(np.array(per_seed, dtype=np.float64), axis=0)
    out = {}
    for model in models:
        out[f"{split_name}.{model}.spearman.ci"] = interval(boot[model])
    for a, b in itertools.combinations(models, 2):
        diff = boot[a] - boot[b]
        point = float(np.mean([spearman(s["pred"][a], s["y"]) - spearman(s["pred"][b], s["y"]) for s in seeds]))
        ci = interval(diff)
        key = f"{split_name}.diff.{a}.vs.{b}"
        out[key] = point
        out[key + ".ci"] = ci
        out[key + ".within_noise"] = bool(ci[0] <= 0.0 <= ci[1]) if ci[0] == ci[0] else None
    return out


def evaluate_head(settings: PixivSettings, head_path: str | os.PathLike, data: PixivData) -> dict:
    """One saved head on the config's split's test works; refuses works the head was trained on."""

    head = load_head(head_path)
    recorded = (head.config.extra or {}).get("split")
    if not isinstance(recorded, dict) or "test_ids_sha256" not in recorded:
        raise ConfigError(f"{head_path}: its config sidecar records no split (test works' ids); only heads trained "
                          "by `cityclf pixiv train` can be evaluated without the risk of testing on training works")
    rec = data.records
    split = make_split(settings.split, rec, settings.test_fraction, settings.val_fraction, settings.seed)
    check_not_trained_on(recorded, rec, split, str(head_path))
    target = fit_target(settings, rec.subset(split.train))
    test = split.test[np.isfinite(target.score(rec.subset(split.test)))]
    y = target.score(rec.subset(test))
    pred = predict(head, data, test)[:, 0]
    m = popularity_metrics(pred, y, rec.subset(test))
    if settings.bootstrap:
        rng = np.random.default_rng(0)
        m["spearman.ci"] = interval([spearman(pred[i], y[i]) for i in bootstrap_draws(rec.user_id[test],
                                                                                     settings.bootstrap, rng)])
    return m


def check_not_trained_on(recorded: dict, rec, split: Split, source: str) -> None:
    """Refuse when `split`'s test works are not among the head's recorded test works (they may be training works).

    With the ids listed, every test work must be one of them; with only their digest, the split must be the
    head's own (same rule, seed and works: the same digest)."""
    ids = rec.illust_id[split.test]
    listed = recorded.get("test_ids")
    if listed is not None:
        foreign = np.setdiff1d(ids, np.asarray(listed, dtype=np.int64))
        bad = len(foreign)
    else:
        bad = 0 if ids_digest(ids) == recorded["test_ids_sha256"] else len(ids)
    if bad:
        raise ConfigError(
            f"{source} was not tested on {bad} of the {len(ids)} test works of this config's split "
            f"({split.name}, seed {split.seed}); it may have trained on them. Evaluate it with the split it was "
            f"trained with: data.split: {recorded.get('name')}, train.seed: {recorded.get('seed')}, test_fraction: "
            f"{recorded.get('test_fraction')}, val_fraction: {recorded.get('val_fraction')}, on the same works")


def write_json(path: Path, data: dict) -> None:
    """JSON with NaN written as null, atomically."""
    from ..confined import atomic_write

    atomic_write(path, (json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                    for k, v in data.items()}, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _cell(table: dict, key: str, ci: bool = False) -> str:
    v = table.get(key)
    if v is None or v != v:
        return "n/a"
    text = f"{v:.3f}"
    sd = table.get(key + ".std")
    if sd is not None and sd == sd:
        text += f" ± {sd:.3f}"
    interval_ = table.get(key + ".ci") if ci else None
    if interval_ and interval_[0] is not None:
        text += f" [{interval_[0]:.2f}, {interval_[1]:.2f}]"
    return text


def format_table(table: dict, splits=None, models=None) -> str:
    """The ablation as Markdown, from ablation.json alone: a row per split and model, then which differences
    are within noise (the 95% by-artist interval of the paired difference holds 0)."""
    splits = splits or list(dict.fromkeys(k.split(".")[0] for k in table if k.endswith(".artists_on_both_sides")))
    models = models or table.get("models") or []
    models = [*[m for m in models if m not in (PROBE, BASELINE)], PROBE, BASELINE]
    reference = models[0]
    lines = ["| split | model | Spearman ± sd over seeds [95% CI] | Δ vs " + reference + " [95% CI] | "
             "within-artist | between-artist | top-10% precision | MAE |", "|---|---|---|---|---|---|---|---|"]
    noise: list[str] = []
    for split_name in splits:
        for model in models:
            if f"{split_name}.{model}.spearman" not in table:
                continue
            if model == reference:
                delta = "—"
            else:
                key = f"{split_name}.diff.{reference}.vs.{model}"
                d, ci = table.get(key), table.get(key + ".ci")
                delta = "n/a" if d is None else f"{-d:+.3f}" + (f" [{-ci[1]:+.2f}, {-ci[0]:+.2f}]"
                                                                 if ci and ci[0] is not None else "")
                if table.get(key + ".within_noise"):
                    delta += " (noise)"
            cells = [_cell(table, f"{split_name}.{model}.spearman", ci=True), delta,
                     *(_cell(table, f"{split_name}.{model}.{k}") for k in SHOWN[1:])]
            lines.append(f"| {split_name} | {model} | " + " | ".join(cells) + " |")
        pairs = [k[len(split_name) + 6: -len(".within_noise")] for k, v in table.items()
                 if k.startswith(f"{split_name}.diff.") and k.endswith(".within_noise") and v]
        if pairs:
            noise.append(f"- {split_name}: within noise: " + "; ".join(p.replace(".vs.", " vs ") for p in pairs))
        else:
            noise.append(f"- {split_name}: every paired difference is beyond noise")
    return "\n".join(lines + ["", "Paired differences whose 95% interval (test works resampled by artist) holds 0:",
                               *noise])


def _canvas(width: int, height: int):
    from PIL import Image, ImageDraw


    img = Image.new("RGB", (width, height), BG)
    return img, ImageDraw.Draw(img)


def _save(img, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out


def _panel(draw, x0, y0, size, lo, hi, x_label, y_label, small, title, subtitle):

    draw.text((x0, y0 - 34), title, font=small, fill=FG)
    draw.text((x0, y0 - 20), subtitle, font=small, fill=MUTED)
    draw.rectangle([x0, y0, x0 + size, y0 + size], outline=MUTED)
    draw.text((x0, y0 + size + 3), f"{lo:.3g}", font=small, fill=MUTED)
    draw.text((x0 + size - 24, y0 + size + 3), f"{hi:.3g}", font=small, fill=MUTED)
    draw.text((x0 + size // 2 - 60, y0 + size + 3), x_label, font=small, fill=MUTED)
    draw.text((x0 - 26, y0 - 6), f"{hi:.3g}", font=small, fill=MUTED)
    draw.text((x0 + 4, y0 + 4), y_label, font=small, fill=MUTED)
    span = hi - lo or 1.0
    fx = lambda v: x0 + size * (v - lo) / span  # noqa: E731
    fy = lambda v: y0 + size * (1 - (v - lo) / span)  # noqa: E731
    draw.line([fx(lo), fy(lo), fx(hi), fy(hi)], fill=(70, 70, 80))
    return fx, fy


def scatter_panels(points: dict, out: Path, panel: int = 220) -> Path:
    """Predicted (y) vs actual (x) test scores, a panel per (split, model), as a PNG (Pillow only)."""

    splits = list(dict.fromkeys(s for s, _ in points))
    models = list(dict.fromkeys(m for _, m in points))
    pad, head = 40, 44
    img, draw = _canvas(len(models) * (panel + pad) + pad, len(splits) * (panel + head + pad) + pad)
    small = font(11)
    for r, split_name in enumerate(splits):
        for c, model in enumerate(models):
            if (split_name, model) not in points:
                continue
            pred, true, seed = points[(split_name, model)]
            x0, y0 = pad + c * (panel + pad), pad + r * (panel + head + pad) + head
            lo = float(min(np.min(true), np.min(pred), 0.0))
            hi = float(max(np.max(true), np.max(pred), 1.0))
            fx, fy = _panel(draw, x0, y0, panel, lo, hi, "x: actual target s", "y: predicted s", small,
                            f"{split_name} / {model}", f"seed {seed}, {len(true)} test works, Spearman "
                            f"{_rho(pred, true):.3f}")
            for p, t in zip(pred, true):
                x, y = fx(t), fy(p)
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(86, 156, 214))
    return _save(img, out)


def reliability_panels(table: dict, splits, models, out: Path, panel: int = 200) -> Path:
    """Mean actual vs mean predicted percentile per decile of the predicted one, pooled over the seeds."""

    pad, head = 40, 44
    img, draw = _canvas(len(models) * (panel + pad) + pad, len(splits) * (panel + head + pad) + pad)
    small = font(11)
    for r, split_name in enumerate(splits):
        for c, model in enumerate(models):
            rows = table.get(f"{split_name}.{model}.reliability")
            if not rows:
                continue
            x0, y0 = pad + c * (panel + pad), pad + r * (panel + head + pad) + head
            fx, fy = _panel(draw, x0, y0, panel, 0.0, 100.0, "x: predicted percentile", "y: actual percentile",
                            small, f"{split_name} / {model}",
                            f"mean of seeds {', '.join(map(str, table.get('seeds', [])))}; by decile")
            line = [(fx(p), fy(a)) for p, a, _ in rows]
            if len(line) > 1:
                draw.line(line, fill=(230, 150, 70), width=2)
            for x, y in line:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(230, 150, 70))
    return _save(img, out)


def _rho(pred, true) -> float:
    return spearman(np.asarray(pred), np.asarray(true)) if len(true) > 1 else float("nan")


__all__ = ["BASELINE", "PROBE", "check_not_trained_on", "evaluate_head", "format_table", "model_name",
           "reliability_panels", "run_ablation", "scatter_panels", "write_json"]
