"""Crop plans and views: the reference's tiling rules, reductions, and the never-upscale policy."""

from __future__ import annotations

import pytest
import torch
from conftest import illustration

from cityclf_core import ConfigError, CropPolicy, plan_crops, reduce_tiles, render_views
from cityclf_core.scoring import crops

S = 336
TILE = CropPolicy(tiling=True)


@pytest.mark.parametrize(
    "w, h, tiled",
    [(672, 672, False), (673, 673, True), (672, 2000, False), (700, 2000, True), (400, 300, False)],
)
def test_tiles_only_when_short_side_is_strictly_over_2S(w, h, tiled):
    assert plan_crops(h, w, TILE, S).tiled is tiled


def test_long_side_over_1536_sets_short_side_to_1536_even_upscaling():
    plan = plan_crops(2000, 1000, TILE, S)  # a 1000 wide, 2000 tall image
    assert plan.resized == (3072, 1536) and plan.mode == "bilinear"
    plan = plan_crops(1536, 1000, TILE, S)  # long side exactly 1536: left alone
    assert plan.resized is None
    plan = plan_crops(3000, 2000, TILE, S)
    assert plan.resized == (int(1536 * 3000 / 2000), 1536)


def test_never_upscale_policy_only_shrinks():
    no_up = CropPolicy(tiling=True, upscale=False)
    assert plan_crops(2000, 1000, no_up, S).resized is None  # 1000 short side: kept
    assert plan_crops(3000, 2000, no_up, S).resized == (2304, 1536)  # still shrinks


def test_five_boxes_are_corners_then_centre_with_round_half_even():
    plan = plan_crops(1000, 677, TILE, S)  # (h, w): bottom 328, right 5 -> centre round(2.5) == 2
    T = 672
    assert plan.box == T
    assert plan.boxes == ((0, 0), (0, 5), (328, 0), (328, 5), (164, 2))


def test_whole_image_view_is_the_clip_processor_resize_and_floor_centre_crop():
    plan = plan_crops(500, 375, CropPolicy(tiling=False), S)
    assert plan.resized == (448, 336) and plan.mode == "bicubic"
    assert plan.boxes == (((448 - 336) // 2, 0),)
    assert plan_crops(336, 336, TILE, S).resized is None  # already S x S: no resize at all


def test_explicit_tile_size_and_default_2S():
    assert plan_crops(1000, 1000, CropPolicy(tiling=True, tile_size=512), 224).box == 512
    assert plan_crops(1000, 1000, TILE, 224).box == 448


def test_render_views_shapes_range_and_8bit_rounding():
    img = torch.from_numpy(illustration(900, 700)).float().div(255).permute(2, 0, 1)[None]
    plan = plan_crops(700, 900, TILE, 32)
    views = render_views(img, plan, 32)
    assert views.shape == (5, 3, 32, 32) and views.dtype == torch.float32
    assert views.min() >= 0 and views.max() <= 1
    assert torch.equal(views, (views * 255).round() / 255)


def test_batched_render_equals_one_by_one():
    a = torch.from_numpy(illustration(300, 200, 1)).float().div(255)
    b = torch.from_numpy(illustration(300, 200, 2)).float().div(255)
    batch = torch.stack([a, b]).permute(0, 3, 1, 2)
    plan = plan_crops(200, 300, TILE, 32)
    together = render_views(batch, plan, 32)
    apart = torch.cat([render_views(x[None], plan, 32) for x in batch])
    assert torch.allclose(together, apart, atol=1e-6)


def test_the_windowed_resize_for_huge_intermediates_matches_a_full_resize(monkeypatch):
    """Extreme aspect ratios resize only a window around each crop; the views barely differ."""
    img = torch.from_numpy(illustration(200, 3000, 3)).float().div(255).permute(2, 0, 1)[None]
    plan = plan_crops(3000, 200, CropPolicy(tiling=False), 32)  # whole view of a 1:15 strip
    full = render_views(img, plan, 32)
    monkeypatch.setattr(crops, "MAX_RESIZE_PIXELS", 100)
    windowed = render_views(img, plan, 32)
    assert windowed.shape == full.shape
    assert (windowed - full).abs().mean() < 0.02


@pytest.mark.parametrize("how, expected", [("mean", [2.0, 0.4]), ("median", [2.0, 0.3]),
                                           ("max", [4.0, 0.9]), ("min", [0.0, 0.1])])
def test_reduce_each_class_independently(how, expected):
    values = torch.tensor([[0.0, 0.3], [4.0, 0.1], [2.0, 0.9], [1.0, 0.2], [3.0, 0.5]])
    assert reduce_tiles(values, how).tolist() == pytest.approx(expected)


def test_bad_options_are_clear():
    with pytest.raises(ConfigError, match="unknown tile combine 'avg'"):
        reduce_tiles(torch.zeros(5, 2), "avg")
    with pytest.raises(ConfigError, match="tile size must be a positive"):
        CropPolicy(tiling=True, tile_size=0)
    with pytest.raises(ConfigError, match="nothing to crop"):
        plan_crops(0, 10, TILE, S)
