"""The popularity networks, on frozen CLIP embeddings [n, F]. Each has `logits(x)` -> [n, outputs + 1].

(a) SingleTaskNet     input standardisation -> MLP -> 1 logit (popularity)
(b) MultiTaskNet      input standardisation -> shared MLP trunk -> popularity (1), sanity level (3: general,
                      sensitive, explicit) and AI flag (2: human, AI) logits, plus `log_vars`: one learned
                      log-variance per task for the uncertainty-weighted loss (Kendall, Gal & Cipolla 2018;
                      see losses in kinds/popularity.py)
(c) AttentionNet      (b), then the predicted metadata fed back as tokens: [trunk features, sanity
                      probabilities, AI probabilities] each projected to d, plus a learned type embedding,
                      through one pre-norm self-attention block; popularity is read from the first token.

Each network also holds `quantiles`: the popularity scores of its training
works at the 0th, 1st, ... 100th percentile (from the head's config sidecar,
not from the weights file, so heads saved before it existed still load).
`logits(x)` then appends one column, the percentile of the score among the
training works' scores (0..100, NaN without quantiles): the displayed value.

The input standardisation is a BatchNorm without affine terms and with a
cumulative average (momentum None): during training it collects the mean and
variance of the training embeddings, saved with the weights, and at inference
it standardises with them. CLIP embeddings share a large common direction; this
removes it without a separate preprocessing file.
"""

from __future__ import annotations

import torch
from torch import nn

from .popularity_outputs import AI, OUTPUT_NAMES, SANITY

DROPOUT = 0.1


def input_norm(features: int) -> nn.Module:
    return nn.BatchNorm1d(features, affine=False, momentum=None)


def trunk(features: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Dropout(DROPOUT))


def percentile_of(scores: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Percentile (0..100) of each score among the training scores whose percentiles are `quantiles`
    (101 sorted values: the 0th ... 100th percentile), interpolated linearly; NaN without quantiles."""
    if quantiles.numel() < 2:
        return torch.full_like(scores, float("nan"))
    q = quantiles.to(scores)
    n = q.numel() - 1
    hi = torch.searchsorted(q, scores.contiguous(), right=True).clamp(1, n)
    lo_v, hi_v = q[hi - 1], q[hi]
    frac = ((scores - lo_v) / (hi_v - lo_v).clamp_min(1e-12)).clamp(0.0, 1.0)
    return ((hi - 1).to(scores) + frac) * (100.0 / n)


class SingleTaskNet(nn.Module):
    outputs = 1

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.features, self.hidden = features, hidden
        self.norm = input_norm(features)
        self.trunk = trunk(features, hidden)
        self.popularity = nn.Linear(hidden, 1)
        self.register_buffer("quantiles", torch.zeros(0), persistent=False)

    def set_quantiles(self, quantiles) -> None:
        q = torch.as_tensor(list(quantiles) if quantiles is not None else [], dtype=torch.float32)
        self.quantiles = q.sort().values.to(self.quantiles.device)

    def task_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.popularity(self.trunk(self.norm(x)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[n, outputs + 1]: the heads' logits, then the percentile column (see the module docstring)."""
        out = self.task_logits(x)
        pct = percentile_of(torch.sigmoid(out[:, 0].detach()), self.quantiles)
        return torch.cat([out, pct[:, None]], dim=1)


class MultiTaskNet(SingleTaskNet):
    outputs = len(OUTPUT_NAMES)

    def __init__(self, features: int, hidden: int):
        super().__init__(features, hidden)
        self.sanity = nn.Linear(hidden, 3)
        self.ai = nn.Linear(hidden, 2)
        self.log_vars = nn.Parameter(torch.zeros(3))  # popularity, sanity, AI
        # set from the first batch's losses (kinds/popularity.py); a loaded head's are already set
        self.log_vars_ready = False
        self.register_load_state_dict_post_hook(_mark_ready)
        self.task_losses: list[float] | None = None  # running mean of the batch losses, per task

    def task_logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(self.norm(x))
        return torch.cat([self.popularity(h), self.sanity(h), self.ai(h)], dim=1)


class AttentionNet(MultiTaskNet):
    def __init__(self, features: int, hidden: int, width: int = 64, heads: int = 4):
        super().__init__(features, hidden)
        self.token_features = nn.Linear(hidden, width)
        self.token_sanity = nn.Linear(3, width)
        self.token_ai = nn.Linear(2, width)
        self.token_type = nn.Parameter(torch.zeros(3, width))
        nn.init.normal_(self.token_type, std=0.02)
        self.block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=DROPOUT,
                                                activation="gelu", batch_first=True, norm_first=True)
        self.popularity = nn.Linear(width, 1)

    def task_logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(self.norm(x))
        sanity, ai = self.sanity(h), self.ai(h)
        tokens = torch.stack([self.token_features(h), self.token_sanity(sanity.softmax(-1)),
                              self.token_ai(ai.softmax(-1))], dim=1) + self.token_type
        mixed = self.block(tokens)
        return torch.cat([self.popularity(mixed[:, 0]), sanity, ai], dim=1)


def _mark_ready(module, incompatible) -> None:
    module.log_vars_ready = True


NETS = {"popularity": SingleTaskNet, "popularity-multitask": MultiTaskNet, "popularity-attention": AttentionNet}

__all__ = ["AI", "AttentionNet", "MultiTaskNet", "NETS", "OUTPUT_NAMES", "SANITY", "SingleTaskNet", "percentile_of"]
