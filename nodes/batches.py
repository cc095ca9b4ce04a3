"""Per-image plumbing for ComfyUI batches: IMAGE lists, LATENT dicts and MASKs split and re-stacked.

The gate and sort nodes work image by image; these helpers split whatever came
in (a batch, a list of batches of different sizes) into items, pick items by
index, and stack consecutive items of the same size back into batches, so a
plain batch stays a plain batch.
"""

from __future__ import annotations

import math

import torch

from ..cityclf_core import ConfigError, image_list


def flat_floats(values, what: str = "scores") -> list[float]:
    out: list[float] = []

    def add(v):
        if isinstance(v, (list, tuple)):
            for x in v:
                add(x)
        elif isinstance(v, torch.Tensor):
            out.extend(float(x) for x in v.flatten().tolist())
        elif isinstance(v, (int, float)):
            out.append(float(v))
        else:
            raise ConfigError(f"{what}: expected numbers, got {type(v).__name__}; connect a FLOAT output "
                              "such as the Predict node's score")

    add(values)
    return out


def check_count(n_images: int, n_other: int, what: str) -> None:
    if n_images != n_other:
        raise ConfigError(
            f"got {n_images} image(s) but {n_other} {what}: connect the {what} that belong to these images "
            "(e.g. the Predict node's score for the same images)"
        )


def stack_runs(items: list[torch.Tensor]) -> list[torch.Tensor]:
    """Stack consecutive items of equal shape: [a, a, b] -> [stack(a, a), stack(b)]."""
    runs: list[list[torch.Tensor]] = []
    for x in items:
        if runs and runs[-1][0].shape == x.shape:
            runs[-1].append(x)
        else:
            runs.append([x])
    return [torch.stack(r) for r in runs]


def images_in(images) -> list[torch.Tensor]:
    return image_list(images)


# ---------------------------------------------------------------- masks


def mask_items(masks, count: int) -> list[torch.Tensor] | None:
    """MASK input(s) -> one [H, W] mask per image, or None when not connected."""
    if masks is None or (isinstance(masks, list) and all(m is None for m in masks)):
        return None
    items: list[torch.Tensor] = []
    for m in masks if isinstance(masks, list) else [masks]:
        if m is None:
            continue
        if m.ndim == 2:
            items.append(m)
        elif m.ndim == 3:
            items.extend(m.unbind(0))
        else:
            raise ConfigError(f"mask: expected [B, H, W] or [H, W], got shape {tuple(m.shape)}")
    if len(items) != count:
        raise ConfigError(f"got {count} image(s) but a mask batch of {len(items)}: the mask must have one "
                          "mask per image (the same batch size)")
    return items


# ---------------------------------------------------------------- latents


def latent_items(latents, count: int) -> list[dict] | None:
    """LATENT input(s) -> one single-item LATENT dict per image, or None when not connected."""
    if latents is None or (isinstance(latents, list) and all(x is None for x in latents)):
        return None
    items: list[dict] = []
    for lat in latents if isinstance(latents, list) else [latents]:
        if lat is None:
            continue
        if not isinstance(lat, dict) or "samples" not in lat:
            raise ConfigError("latent: expected a LATENT (a dict with 'samples')")
        samples = lat["samples"]
        b = int(samples.shape[0])
        noise = lat.get("noise_mask")
        index = lat.get("batch_index")
        for i in range(b):
            item = {k: v for k, v in lat.items() if k not in ("samples", "noise_mask", "batch_index")}
            item["samples"] = samples[i : i + 1]
            if noise is not None:
                item["noise_mask"] = noise[i : i + 1] if noise.ndim >= 3 and noise.shape[0] == b else noise
            if index is not None:
                item["batch_index"] = [index[i]]
            items.append(item)
    if len(items) != count:
        raise ConfigError(f"got {count} image(s) but a latent batch of {len(items)}: the latent must be the one "
                          "these images were decoded from (the same batch size)")
    return items


def stack_latents(items: list[dict]) -> list[dict]:
    """Consecutive single-item LATENTs of one shape -> batched LATENT dicts."""
    runs: list[list[dict]] = []
    for it in items:
        if runs and runs[-1][0]["samples"].shape[1:] == it["samples"].shape[1:]:
            runs[-1].append(it)
        else:
            runs.append([it])
    out = []
    for run in runs:
        lat = {k: v for k, v in run[0].items() if k not in ("samples", "noise_mask", "batch_index")}
        lat["samples"] = torch.cat([it["samples"] for it in run])
        if "noise_mask" in run[0]:
            masks = [it["noise_mask"] for it in run]
            per_item = all(m.ndim >= 3 and m.shape[0] == 1 for m in masks)
            lat["noise_mask"] = torch.cat(masks) if per_item and len(masks) > 1 else masks[0]
        if all("batch_index" in it for it in run):
            lat["batch_index"] = [it["batch_index"][0] for it in run]
        out.append(lat)
    return out


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))
