"""Training checkpoints: DIR/checkpoints/<step>/ with the model, the optimizer state and the rest.

model/ is a sentence-transformers folder (convert.py's export, HF tensor names, loadable by
sentence-transformers itself), opt_state.safetensors the optimizer leaves in tree order, and
state.json the step, the dropout key and the data loader's position. Written under a temporary
name and renamed (as byol's checkpointing does); on restore a corrupt or mismatched checkpoint is
skipped for the previous one. The state is main.TrainState (params, opt_state, rng, step).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from absl import logging

import convert

CHECKPOINTS = "checkpoints"  # a training workdir keeps DIR/checkpoints/<step:09d>/


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


def save(workdir: str, m: convert.LoadedModel, state: Any, loader_state: dict, keep: int) -> str:
    """DIR/checkpoints/<step>/ = model/ (a sentence-transformers folder), optimizer, state.json.

    Written under a temporary name, then renamed: a crash leaves no half checkpoint behind.
    """
    step = int(state.step)
    root = os.path.join(workdir, CHECKPOINTS)
    final = os.path.join(root, f"{step:09d}")
    tmp = os.path.join(root, f".tmp-{step:09d}")
    shutil.rmtree(tmp, ignore_errors=True)
    host = jax.device_get(state)
    convert.export_model(m, os.path.join(tmp, "model"), params=host.params)
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
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    for old in checkpoint_dirs(workdir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(workdir: str, m: convert.LoadedModel, template: Any) -> tuple[Any, dict] | None:
    """The newest readable checkpoint as `template`'s type (a corrupt one is skipped with a
    warning) and its loader state, or None."""
    for path in checkpoint_dirs(workdir):
        try:
            restored = convert.load_model(os.path.join(path, "model"))
            if restored.config != m.config:
                raise ValueError("its model config differs from this run's")
            tensors = safetensors.numpy.load_file(os.path.join(path, "opt_state.safetensors"))
            leaves, treedef = jax.tree.flatten(template.opt_state)
            if len(tensors) != len(leaves):
                raise ValueError("its optimizer state does not match this run's optimizer")
            opt_leaves = [tensors[f"{i:05d}"] for i in range(len(leaves))]
            for want, got in zip(leaves, opt_leaves, strict=True):
                if tuple(want.shape) != got.shape:
                    raise ValueError("its optimizer state does not match this run's optimizer")
            with open(os.path.join(path, "state.json")) as f:
                meta = json.load(f)
            rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
            state = template._replace(
                params=restored.params,
                opt_state=jax.tree.unflatten(treedef, opt_leaves),
                rng=rng,
                step=np.int32(meta["step"]),
            )
            return state, meta["loader"]
        except Exception as e:  # any unreadable checkpoint: fall back to the previous one
            logging.warning("checkpoint %s is unreadable (%s); trying the previous one", path, e)
            print(
                f"warning: checkpoint {path} is unreadable ({e}); using the previous one",
                file=sys.stderr,
            )
    return None
