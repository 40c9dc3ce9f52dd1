"""Training checkpoints: DIR/checkpoints/<step>/ with the model, the optimizer state and the rest.

model/ is a sentence-transformers folder (convert.py's export, HF tensor names, loadable by
sentence-transformers itself), opt_state.safetensors the optimizer leaves in tree order, and
state.json the step, the dropout key and the data loader's position. The state is
step.TrainState (params, opt_state, rng, step).

Nothing is lost: a checkpoint is written under a temporary name and renamed into place (as byol's
checkpointing does), and one replacing a folder of the same step renames the old one aside
first, so at every moment of a save the newest complete checkpoint is on disk under a name
`restore` finds. On restore, a checkpoint that cannot be read (a missing or truncated file, bad
JSON, bad safetensors) is renamed aside to `<step>.unreadable` (kept, never deleted) and the
previous one is used; one that reads but does not fit this run (another architecture or
optimizer) raises ResumeError.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from absl import logging

import convert

CHECKPOINTS = "checkpoints"  # a training workdir keeps DIR/checkpoints/<step:09d>/
_TMP, _OLD = ".tmp-", ".old-"  # a save in progress; a same-step folder being replaced
# Fields of the architecture a resumed run may change: dropout only acts in training.
_ARCH_FREE = ("dropout_rate", "attention_dropout_rate")


class ResumeError(ValueError):
    """The workdir's checkpoints do not fit this run's config; nothing was changed."""


class _Unreadable(Exception):
    """A checkpoint that cannot be read (missing or truncated file, bad JSON or safetensors)."""


def checkpoint_dirs(workdir: str) -> list[str]:
    """A training workdir's checkpoint folders (DIR/checkpoints/<step:09d>), newest first."""
    root = os.path.join(workdir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    steps = sorted((int(n) for n in os.listdir(root) if n.isdigit()), reverse=True)
    return [os.path.join(root, f"{step:09d}") for step in steps]


def latest_dir(workdir: str) -> str | None:
    """The newest checkpoint folder of a workdir that holds a model, or None."""
    for path in checkpoint_dirs(workdir):
        if os.path.exists(os.path.join(path, "model", "model.safetensors")):
            return path
    return None


def _finish_replacements(root: str) -> None:
    """Completes a save killed between its two renames: `.old-<step>` is the previous folder of
    that step; it goes back when the new one is not in place, else it is redundant."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name.startswith(_OLD) and name[len(_OLD) :].isdigit():
            final = os.path.join(root, name[len(_OLD) :])
            if os.path.exists(final):
                shutil.rmtree(os.path.join(root, name))
            else:
                os.rename(os.path.join(root, name), final)


def _fsync_tree(top: str) -> None:
    """Flushes every file and folder under `top` to disk (a power cut after the rename)."""
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(
    workdir: str,
    m: convert.LoadedModel,
    state: Any,
    loader_state: dict,
    keep: int,
    on_stage: Callable[[str], None] | None = None,
) -> str:
    """DIR/checkpoints/<step>/ = model/ (a sentence-transformers folder), optimizer, state.json.

    Written to `.tmp-<step>` (what killed saves left there is removed first), then renamed
    into place; an existing folder of the same step is first renamed to `.old-<step>` and
    deleted only once the new one is in place. Then all but the newest `keep` checkpoints are
    deleted. `on_stage(name)` is called after each stage
    (model, written, aside, placed, pruned): tests stop the process there.
    """
    stage = on_stage or (lambda name: None)
    step = int(state.step)
    root = os.path.join(workdir, CHECKPOINTS)
    final = os.path.join(root, f"{step:09d}")
    tmp, old = os.path.join(root, f"{_TMP}{step:09d}"), os.path.join(root, f"{_OLD}{step:09d}")
    _finish_replacements(root)
    for name in os.listdir(root) if os.path.isdir(root) else ():
        if name.startswith(_TMP):  # a killed save's: it never became a checkpoint
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    host = jax.device_get(state)
    convert.export_model(m, os.path.join(tmp, "model"), params=host.params)
    stage("model")
    leaves = jax.tree.leaves(host.opt_state)
    safetensors.numpy.save_file(
        {f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)},
        os.path.join(tmp, "opt_state.safetensors"),
    )
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(
            {
                "step": step,
                "rng": np.asarray(jax.random.key_data(host.rng)).tolist(),
                "loader": loader_state,
            },
            f,
        )
    _fsync_tree(tmp)
    stage("written")
    if os.path.exists(final):
        os.rename(final, old)
        stage("aside")
    os.rename(tmp, final)
    stage("placed")
    shutil.rmtree(old, ignore_errors=True)
    for older in checkpoint_dirs(workdir)[keep:]:
        shutil.rmtree(older, ignore_errors=True)
    stage("pruned")
    return final


def _set_aside(path: str) -> str:
    """Renames an unreadable checkpoint folder to `<step>.unreadable[-N]`: kept, not listed."""
    aside, i = f"{path}.unreadable", 1
    while os.path.exists(aside):
        i += 1
        aside = f"{path}.unreadable-{i}"
    os.rename(path, aside)
    return aside


def _architecture_diff(saved: convert.LoadedModel, m: convert.LoadedModel) -> list[str]:
    a, b = dataclasses.asdict(saved.config), dataclasses.asdict(m.config)
    diff = [f"{k} {a[k]!r} -> {b[k]!r}" for k in a if k not in _ARCH_FREE and a[k] != b[k]]
    for name in ("pooling", "normalize"):
        if getattr(saved, name) != getattr(m, name):
            diff.append(f"{name} {getattr(saved, name)!r} -> {getattr(m, name)!r}")
    return diff


def _read(path: str, m: convert.LoadedModel, template: Any) -> tuple[Any, dict]:
    """One checkpoint as `template`'s type; _Unreadable or ResumeError."""
    try:
        saved = convert.load_model(os.path.join(path, "model"))
    except convert.ModelFolderError as e:
        raise _Unreadable(str(e)) from e
    diff = _architecture_diff(saved, m)
    if diff:
        raise ResumeError(
            f"checkpoint {path}: its model differs from this run's ({'; '.join(diff)}); "
            "nothing was changed: use a new workdir, or the config it was trained with"
        )
    opt_path = os.path.join(path, "opt_state.safetensors")
    try:
        tensors = safetensors.numpy.load_file(opt_path)
    except Exception as e:  # a missing file (OSError) or safetensors' own error types
        raise _Unreadable(f"{opt_path}: {e}") from e
    leaves, treedef = jax.tree.flatten(template.opt_state)
    names = [f"{i:05d}" for i in range(len(leaves))]
    got = {k: v.shape for k, v in tensors.items()}
    want = dict(zip(names, (tuple(x.shape) for x in leaves), strict=True))
    if got != want:
        raise ResumeError(
            f"checkpoint {path}: its optimizer state ({len(got)} arrays) does not fit this "
            f"run's optimizer ({len(want)} arrays); use a new workdir"
        )
    state_path = os.path.join(path, "state.json")
    try:
        with open(state_path) as f:
            meta = json.load(f)
        rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
        step, loader = np.int32(meta["step"]), meta["loader"]
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise _Unreadable(f"{state_path}: {e!r}") from e
    state = template._replace(
        params=saved.params,
        opt_state=jax.tree.unflatten(treedef, [tensors[k] for k in names]),
        rng=rng,
        step=step,
    )
    return state, loader


def restore(
    workdir: str, m: convert.LoadedModel, template: Any, *, set_aside: bool = True
) -> tuple[Any, dict] | None:
    """The newest readable checkpoint as `template`'s type and its loader state, or None.

    An unreadable one is renamed aside (with `set_aside`; in a multi-process run only process 0
    renames) and named in a warning, and the previous one is tried; one that does not fit this
    run raises ResumeError.
    """
    if set_aside:
        _finish_replacements(os.path.join(workdir, CHECKPOINTS))
    for path in checkpoint_dirs(workdir):
        try:
            return _read(path, m, template)
        except _Unreadable as e:
            where = f"renamed to {_set_aside(path)}" if set_aside else "left for process 0"
            message = f"checkpoint {path} is unreadable ({e}); {where}; trying the previous one"
            logging.warning("%s", message)
            print(f"warning: {message}", file=sys.stderr, flush=True)
    return None
