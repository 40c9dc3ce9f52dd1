"""Ablation: anchor -> positive cross-entropy only (sentence-transformers' default
MultipleNegativesRankingLoss), instead of the seed's symmetric "as in CLIP" average."""

from configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.loss.symmetric = False  # MultipleNegativesRankingLoss (Henderson et al. 2017), one direction
    return c
