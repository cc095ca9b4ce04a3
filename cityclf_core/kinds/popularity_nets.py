"""The popularity networks, on frozen CLIP embeddings [n, F]. Each has `logits(x)` -> [n, outputs].

(a) SingleTaskNet     input standardisation -> MLP -> 1 logit (popularity)
(b) MultiTaskNet      input standardisation -> shared MLP trunk -> popularity (1), sanity level (3: general,
                      sensitive, explicit) and AI flag (2: human, AI) logits, plus `log_vars`: one learned
                      log-variance per task for the uncertainty-weighted loss (Kendall, Gal & Cipolla 2018;
                      see losses in kinds/popularity.py)
(c) AttentionNet      (b), then the predicted metadata fed back as tokens: [trunk features, sanity
                      probabilities, AI probabilities] each projected to d, plus a learned type embedding,
                      through one pre-norm self-attention block; popularity is read from the first token.

The input standardisation is a BatchNorm without affine terms and with a
cumulative average (momentum None): during training it collects the mean and
variance of the training embeddings, saved with the weights, and at inference
it standardises with them. CLIP embeddings share a large common direction; this
removes it without a separate preprocessing file.
"""

from __future__ import annotations

import torch
from torch import nn

OUTPUT_NAMES = ("popularity", "sanity:general", "sanity:sensitive", "sanity:explicit", "ai:human", "ai:ai")
SANITY = slice(1, 4)
AI = slice(4, 6)
DROPOUT = 0.1


def input_norm(features: int) -> nn.Module:
    return nn.BatchNorm1d(features, affine=False, momentum=None)


def trunk(features: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Dropout(DROPOUT))


class SingleTaskNet(nn.Module):
    outputs = 1

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.features, self.hidden = features, hidden
        self.norm = input_norm(features)
        self.trunk = trunk(features, hidden)
        self.popularity = nn.Linear(hidden, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.popularity(self.trunk(self.norm(x)))


class MultiTaskNet(SingleTaskNet):
    outputs = len(OUTPUT_NAMES)

    def __init__(self, features: int, hidden: int):
        super().__init__(features, hidden)
        self.sanity = nn.Linear(hidden, 3)
        self.ai = nn.Linear(hidden, 2)
        self.log_vars = nn.Parameter(torch.zeros(3))  # popularity, sanity, AI

    def logits(self, x: torch.Tensor) -> torch.Tensor:
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

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(self.norm(x))
        sanity, ai = self.sanity(h), self.ai(h)
        tokens = torch.stack([self.token_features(h), self.token_sanity(sanity.softmax(-1)),
                              self.token_ai(ai.softmax(-1))], dim=1) + self.token_type
        mixed = self.block(tokens)
        return torch.cat([self.popularity(mixed[:, 0]), sanity, ai], dim=1)


NETS = {"popularity": SingleTaskNet, "popularity-multitask": MultiTaskNet, "popularity-attention": AttentionNet}

__all__ = ["AI", "AttentionNet", "MultiTaskNet", "NETS", "OUTPUT_NAMES", "SANITY", "SingleTaskNet"]
