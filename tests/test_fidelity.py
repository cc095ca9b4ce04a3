"""Our batched tensor pipeline against the independent reference-style pipeline.

Required: for the same CLIP and head weights, scores and class
probabilities within 0.01 of the reference (PIL resizes and crops, the
transformers CLIP image processor, one image at a time) on images below,
between and above the tiling thresholds, square and not.
"""

from __future__ import annotations

import pytest
import torch
from conftest import illustration
from PIL import Image
from reference_pipeline import ReferencePipeline, load_reference_head

from cityclf_core import COMBINES, ScoringModel, plan_crops, CropPolicy

# the tiny CLIP has S = 32, so tiles are T = 64 px; 1536 is the reference's fixed resize limit
SIZES = [
    (50, 40),  # below T: whole image
    (64, 100),  # short side == T: still whole (tiling needs strictly greater)
    (65, 65),  # just above T: tiled, square
    (300, 200),  # between: tiled, no resize
    (150, 900),  # between, tall
    (1600, 1700),  # long side > 1536: short side down to 1536
    (1000, 2000),  # the quirk: upscaled to 1536 x 3072
    (2000, 700),  # the quirk, wide: 700 -> 1536
]
TOLERANCE = 0.01


@pytest.fixture(scope="module")
def images():
    return [Image.fromarray(illustration(w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def reference(encoder, score_head_path, class_head_path):
    heads = {"score": load_reference_head(score_head_path), "class": load_reference_head(class_head_path)}
    return ReferencePipeline(encoder.model, encoder.image_size, heads)


def tensors(images):
    import numpy as np

    return [torch.from_numpy(np.array(img)) for img in images]  # uint8 [H, W, 3], mixed sizes


def test_the_sizes_cover_every_branch(encoder):
    plans = [plan_crops(h, w, CropPolicy(tiling=True), encoder.image_size) for w, h in SIZES]
    assert [p.tiled for p in plans] == [False, False, True, True, True, True, True, True]
    assert plans[5].resized == (1536 * 1700 // 1600, 1536)  # (h, w), short side 1536
    assert plans[6].resized == (3072, 1536)  # 1000x2000 upscaled
    assert plans[7].resized == (1536, int(1536 * 2000 / 700))


@pytest.mark.parametrize("combine", COMBINES)
def test_class_probabilities_match_reference(encoder, class_head, reference, images, combine):
    model = ScoringModel().add(class_head, encoder)
    ours = model.score(tensors(images), combine=combine)
    worst = 0.0
    for img, result in zip(images, ours):
        ref = reference.predict(img, "class", tiling=True, combine=combine)
        got = result[class_head.name].values
        worst = max(worst, max(abs(a - b) for a, b in zip(got, ref)))
        assert got == pytest.approx(ref, abs=TOLERANCE), f"{img.size}: ours {got} vs reference {ref}"
    assert worst < TOLERANCE


def test_scores_match_reference_whole_and_tiled(encoder, score_head, reference, images):
    model = ScoringModel().add(score_head, encoder)
    whole = model.score(tensors(images))
    tiled = model.score(tensors(images), tiling="on")
    for img, w, t in zip(images, whole, tiled):
        assert w[score_head.name].score == pytest.approx(reference.predict(img, "score", tiling=False)[0], abs=TOLERANCE)
        assert t[score_head.name].score == pytest.approx(reference.predict(img, "score", tiling=True)[0], abs=TOLERANCE)


def test_the_comparison_is_sensitive(encoder, class_head, score_head, images):
    """Guard against a vacuous pass: the outputs must differ between images by far more than the tolerance."""
    model = ScoringModel().add(class_head, encoder).add(score_head, encoder)
    results = model.score(tensors(images))
    scores = [r[score_head.name].score for r in results]
    p_pass = [r[class_head.name].values[0] for r in results]
    assert max(scores) - min(scores) > 10 * TOLERANCE
    assert max(p_pass) - min(p_pass) > 10 * TOLERANCE


def test_no_upscale_policy_matches_reference_without_the_quirk(encoder, class_head, reference, images):
    model = ScoringModel().add(class_head, encoder)
    ours = model.score(tensors(images), upscale=False)
    for img, result in zip(images, ours):
        emb = reference.embed(img, tiling=True, upscale=False)
        ref = reference.heads["class"](emb).mean(dim=0).tolist()
        assert result[class_head.name].values == pytest.approx(ref, abs=TOLERANCE)
