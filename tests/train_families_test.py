"""A smoke training run for every encoder family, from the tiny transformers-made fixture folders
(tests/make_family_fixtures.py): the trainer, checkpointing and export work with each."""

import os

import jax
import numpy as np
import pytest

import convert
import main
from configs import base

pytestmark = pytest.mark.slow  # trainer runs

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "mpnet"])
def test_smoke_training_run(family, tmp_path):
    c = base.get_config("smoke")
    c.init_from = os.path.join(FIXTURES, f"tiny_{family}")
    c.total_steps, c.checkpoint_every, c.warmup_steps = 3, 3, 1
    out = main.train(c, str(tmp_path), devices=jax.devices()[:2])
    assert out["step"] == 3 and np.isfinite(out["last"]["loss"])
    exported = convert.load_model(str(tmp_path / "export"))
    assert exported.config.model_type == family
    start = convert.load_model(c.init_from)
    moved = [
        float(np.abs(a - b).max())
        for a, b in zip(
            jax.tree.leaves(exported.params), jax.tree.leaves(start.params), strict=True
        )
    ]
    assert max(moved) > 0  # the parameters were trained
    # The workdir itself is a model path (its latest checkpoint) for evaluate.py / convert.py.
    assert convert.load_model(str(tmp_path)).config == exported.config
