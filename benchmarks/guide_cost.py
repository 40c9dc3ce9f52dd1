"""Per-step cost of the guided loss (loss.guide='init') against the plain one (not a test).

    python -m benchmarks.guide_cost [--batch_size=32] [--rounds=4] [--steps=3]
        [--cache_chunk_size=0] [--max_negatives=1]

main.py's train step on the bundled mixture from all-MiniLM-L6-v2 (the demo config, max length
128, packed rows), once plain and once with the guide (a frozen copy of the starting params: one
more forward pass, without gradient, plus the guide's score matrices). The same batches for
both; every step shape of both is compiled before the clock starts; then `rounds` rounds, each
timing `steps` plain steps and `steps` guided ones, interleaved so that the shared machine's load
falls on both alike. Prints one JSON line per configuration (median seconds per step) and their
ratio, with the load average.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from absl import app, flags


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv):
    del argv
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import data as data_lib
    import main as trainer
    import runconfig
    import step as step_lib
    from configs import base

    f = flags.FLAGS
    config = base.get_config("demo")
    config.batch_size, config.data.max_seq_len = f.batch_size, 128
    config.data.max_negatives = f.max_negatives
    config.loss.cache_chunk_size = f.cache_chunk_size
    config.total_steps, config.warmup_steps = 1000, 0
    devices = jax.devices()
    runconfig.validate(config, len(devices))
    m = trainer.build_model(config)
    mesh = jax.make_mesh((len(devices),), (step_lib.AXIS,), devices=devices)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(step_lib.AXIS))
    optimizer, _ = step_lib.make_optimizer(config)
    featurize = step_lib.make_featurizer(config, m, mesh)
    loader = data_lib.MixtureLoader.from_config(
        config.data, batch_size=config.batch_size, seed=0, workdir=tempfile.mkdtemp()
    )
    batches = [featurize(loader.next_examples()) for _ in range(f.steps)]
    batches = [{k: jax.device_put(v, sharded) for k, v in b.items()} for b in batches]

    guided_config = config.copy_and_resolve_references()
    guided_config.loss.guide = "init"
    runconfig.validate(guided_config, len(devices))
    guide_model, guide_params = trainer.build_guide(guided_config, m)
    guide_params = jax.device_put(guide_params, replicated)
    runs = {
        "plain": (step_lib.make_train_step(config, m, mesh, optimizer), ()),
        "guided": (
            step_lib.make_train_step(guided_config, m, mesh, optimizer, guide_model),
            (guide_params,),
        ),
    }
    states, compiled = {}, {}
    t0 = time.time()
    for name, (step, extra) in runs.items():
        params = jax.tree.map(np.array, m.params)
        states[name] = jax.device_put(
            step_lib.TrainState(params, optimizer.init(params), jax.random.key(0), np.int32(0)),
            replicated,
        )
        for b in batches:
            shape = b["ids_GRxL"].shape
            if (name, shape) not in compiled:
                compiled[name, shape] = step.lower(states[name], b, *extra).compile()
    compile_s = time.time() - t0
    times = {name: [] for name in runs}
    masked = []
    load_before = _load()
    for _ in range(f.rounds):
        for name, (_, extra) in runs.items():
            for b in batches:
                t = time.time()
                states[name], metrics = compiled[name, b["ids_GRxL"].shape](states[name], b, *extra)
                jax.block_until_ready(metrics["loss"])
                times[name].append(time.time() - t)
                if name == "guided":
                    masked.append(float(metrics["guide_masked"]))
    out = {}
    for name in runs:
        out[name] = statistics.median(times[name])
        print(
            json.dumps(
                {
                    "config": name,
                    "batch_size": f.batch_size,
                    "max_negatives": f.max_negatives,
                    "cache_chunk_size": f.cache_chunk_size,
                    "steps_timed": len(times[name]),
                    "median_step_s": round(out[name], 3),
                    "min_step_s": round(min(times[name]), 3),
                }
            ),
            flush=True,
        )
    print(
        json.dumps(
            {
                "ratio_guided_over_plain": round(out["guided"] / out["plain"], 3),
                "guide_masked_per_anchor": round(statistics.mean(masked), 2),
                "compile_s": round(compile_s, 1),
                "devices": len(devices),
                "load_before": load_before,
                "load_after": _load(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    flags.DEFINE_integer("batch_size", 32, "global pairs per step")
    flags.DEFINE_integer("rounds", 4, "interleaved rounds (plain, then guided)")
    flags.DEFINE_integer("steps", 3, "steps (distinct batches) per configuration per round")
    flags.DEFINE_integer("cache_chunk_size", 0, "GradCache chunk (rows per device); 0 = off")
    flags.DEFINE_integer("max_negatives", 1, "hard-negative columns")
    app.run(main)
