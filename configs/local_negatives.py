"""Ablation: in-batch negatives from each device's own slice only (no cross-device gather):
what data-parallel training without all_gather gives; the seed's "size matters" says worse."""

from configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.loss.gather = False  # each device scores its rows against its own candidates only
    return c
