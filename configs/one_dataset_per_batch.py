"""Ablation: every global batch from a single dataset, kept for 4 steps: what the seed's TPU
script actually did (train_many_data_files_v2.py: one dataset per 1024-batch, 4 steps)."""

from configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.data.datasets_per_batch = 1  # one dataset per global batch (seed's script)
    c.data.steps_per_dataset = 4  # kept for 4 consecutive steps (seed's script)
    return c
