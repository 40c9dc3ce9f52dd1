"""Ablation: ignore the hard negatives of triplet datasets: in-batch negatives only (the seed's
pair-only runs; the SBERT NLI training showed hard negatives help)."""

from configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.data.max_negatives = 0  # no negative columns: triplets are used as pairs
    return c
