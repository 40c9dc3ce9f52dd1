"""Ablation: Matryoshka embeddings, the ranking loss also on the first 1/2, 1/4, 1/8 of the dims.

Kusupati et al. 2022, "Matryoshka Representation Learning"; sentence-transformers'
`MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), [768, 512, 256, 128, 64])`. The
prefix widths are halvings of MiniLM-L6's 384; weights all 1 (MatryoshkaLoss's default).
Truncated embeddings are then scored with `evaluate.py --truncate_dim=...` (docs/matryoshka.md).
"""

from configs import base

DIMS = (384, 192, 96, 48)  # full, 1/2, 1/4, 1/8 of all-MiniLM-L6-v2's 384


def apply(c):
    c.loss.matryoshka_dims = DIMS  # the loss on each prefix, summed
    c.loss.matryoshka_weights = (1.0,) * len(DIMS)  # MatryoshkaLoss's default: equal weights
    return c


def get_config(arg=None):
    return base.apply_arg(apply(base.base()), arg)
