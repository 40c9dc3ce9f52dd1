"""Ablation: dot-product instead of cosine similarity (sentence-transformers' msmarco dot
models; the seed used scaled cosine). Scale 1, as sentence-transformers uses with dot_score."""

from configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.loss.similarity = "dot"  # msmarco-*-dot-v5 style (sentence-transformers docs)
    c.loss.scale = 1.0  # dot products of unnormalised vectors are already large
    c.model.normalize = False  # a dot-product model keeps the norm
    return c
