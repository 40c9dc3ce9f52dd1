"""checkpoint.py on a tiny model without the trainer: a save stopped at any stage leaves the
newest complete checkpoint, unreadable checkpoints are set aside (kept) for the previous one,
and a checkpoint of another model is an error, not a fallback. The kill -9 runs of the trainer
are in main_test.py."""

import dataclasses
import os

import chex
import jax
import numpy as np
import optax
import pytest

import checkpoint
import convert
import step as step_lib

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(scope="module")
def m():
    return convert.load_model(os.path.join(FIXTURES, "tiny_bert"))


def _state(m, step, optimizer=None):
    """A TrainState at `step` whose params are the model's plus `step` (tells saves apart)."""
    params = jax.tree.map(lambda x: x + np.float32(step), m.params)
    opt = (optimizer or optax.adamw(1e-3)).init(params)
    return step_lib.TrainState(params, opt, jax.random.key(step), np.int32(step))


def _save(workdir, m, step, **kw):
    return checkpoint.save(str(workdir), m, _state(m, step), {"position": step}, 3, **kw)


class Killed(Exception):
    """Raised by a stage hook: save stops there, as when the process is killed (it cleans up
    nothing on the way out)."""


def _stop_at(stage):
    def hook(name):
        if name == stage:
            raise Killed(name)

    return hook


@pytest.mark.parametrize(
    "stage, replacing, survivor",
    [
        ("model", False, 4),  # half a checkpoint in .tmp-8: the previous one is the newest
        ("written", False, 4),  # .tmp-8 complete, not yet renamed
        ("placed", False, 8),
        ("pruned", False, 8),
        ("model", True, -8),  # replacing a folder of step 8: the old one (-8) until the rename
        ("written", True, -8),
        ("aside", True, -8),  # the old one renamed aside, the new one not yet in place
        ("placed", True, 8),
    ],
)
def test_a_save_stopped_at_any_stage_keeps_the_newest_complete_checkpoint(
    tmp_path, m, stage, replacing, survivor
):
    _save(tmp_path, m, 4)
    if replacing:  # an older save of the same step, with other params
        old = _state(m, 8)._replace(params=_state(m, -8).params)
        checkpoint.save(str(tmp_path), m, old, {"position": -8}, 3)
    with pytest.raises(Killed):
        _save(tmp_path, m, 8, on_stage=_stop_at(stage))
    state, loader = checkpoint.restore(str(tmp_path), m, _state(m, 0))
    assert loader == {"position": survivor}
    assert int(state.step) == abs(survivor)
    chex.assert_trees_all_equal(state.params, _state(m, survivor).params)
    # The next save cleans up what the stopped one left.
    _save(tmp_path, m, 12)
    names = sorted(os.listdir(tmp_path / checkpoint.CHECKPOINTS))
    assert names == [f"{s:09d}" for s in ((4, 8, 12) if abs(survivor) == 8 else (4, 12))]


def test_restore_equals_what_was_saved(tmp_path, m):
    _save(tmp_path, m, 4)
    state, loader = checkpoint.restore(str(tmp_path), m, _state(m, 0))
    want = _state(m, 4)
    chex.assert_trees_all_equal(state.params, want.params)
    chex.assert_trees_all_equal(state.opt_state, want.opt_state)
    assert np.array_equal(jax.random.key_data(state.rng), jax.random.key_data(want.rng))
    assert int(state.step) == 4 and loader == {"position": 4}


def _truncate(path):
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: _truncate(os.path.join(d, "model", "model.safetensors")), "model.safetensors"),
        (lambda d: _truncate(os.path.join(d, "opt_state.safetensors")), "opt_state.safetensors"),
        (lambda d: os.remove(os.path.join(d, "opt_state.safetensors")), "opt_state.safetensors"),
        (lambda d: _truncate(os.path.join(d, "state.json")), "state.json"),
        (lambda d: os.remove(os.path.join(d, "model", "config.json")), "config.json: file is"),
    ],
)
def test_an_unreadable_checkpoint_is_set_aside_and_the_previous_one_used(
    tmp_path, m, capsys, damage, reason
):
    _save(tmp_path, m, 4)
    bad = _save(tmp_path, m, 8)
    damage(bad)
    state, loader = checkpoint.restore(str(tmp_path), m, _state(m, 0))
    assert int(state.step) == 4 and loader == {"position": 4}
    err = capsys.readouterr().err
    assert f"checkpoint {bad} is unreadable" in err and reason in err
    assert f"renamed to {bad}.unreadable" in err
    assert not os.path.exists(bad) and os.path.isdir(f"{bad}.unreadable")  # kept, not listed
    assert checkpoint.checkpoint_dirs(str(tmp_path)) == [os.path.dirname(bad) + f"/{4:09d}"]


def test_other_processes_leave_an_unreadable_checkpoint_where_it_is(tmp_path, m, capsys):
    _save(tmp_path, m, 4)
    bad = _save(tmp_path, m, 8)
    _truncate(os.path.join(bad, "state.json"))
    state, _ = checkpoint.restore(str(tmp_path), m, _state(m, 0), set_aside=False)
    assert int(state.step) == 4 and os.path.isdir(bad)
    assert "left for process 0" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_is_an_error_not_a_fallback(tmp_path, m):
    _save(tmp_path, m, 4)
    _save(tmp_path, m, 8)
    other = dataclasses.replace(m, pooling="cls")
    with pytest.raises(checkpoint.ResumeError, match=r"000000008: .*pooling 'mean' -> 'cls'"):
        checkpoint.restore(str(tmp_path), other, _state(m, 0))
    with pytest.raises(checkpoint.ResumeError, match="optimizer state"):
        checkpoint.restore(str(tmp_path), m, _state(m, 0, optax.sgd(0.1, momentum=0.9)))
    assert [os.path.basename(p) for p in checkpoint.checkpoint_dirs(str(tmp_path))] == [
        f"{8:09d}",
        f"{4:09d}",
    ]  # nothing renamed or removed


def test_dropout_is_not_part_of_the_architecture(tmp_path, m):
    _save(tmp_path, m, 4)
    cfg = dataclasses.replace(m.config, dropout_rate=0.0, attention_dropout_rate=0.0)
    state, _ = checkpoint.restore(str(tmp_path), dataclasses.replace(m, config=cfg), _state(m, 0))
    assert int(state.step) == 4
