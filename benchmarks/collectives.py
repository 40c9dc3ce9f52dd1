"""XLA:CPU's gloo collectives: an all-reduce after a reduce-scatter, timed on 2 local processes.

    python -m benchmarks.collectives [--devices_per_process=2] [--table_rows=30522] [--repeats=4]

Starts two copies of itself joined by JAX's distributed runtime on 127.0.0.1 (CPU devices,
gloo collectives, as `main.py` runs on several CPU hosts) and times, after one warm-up call each,
three programs on the mesh of all their devices. Each all-reduces a tuple shaped like the smoke
model's parameter gradients (one [--table_rows, 32] table and 38 [32, 32] blocks), as the train step
does, after the loss's collectives on a [16, 32] block of embeddings per device:

    all_gather                 all-gather, then the all-reduce
    all_gather+reduce_scatter  all-gather, its plain transpose (a reduce-scatter), all-reduce
    all_gather+psum_slice      all-gather, psum + this device's slice instead (loss.gather_rows)

Process 0 prints one JSON line per program with the fastest and the median call in seconds.
On the 2-core VM of docs/benchmarks.md, with 2 devices per process: all_gather 0.06-0.11 s,
all_gather+reduce_scatter 3.3-3.4 s, and all_gather+psum_slice 3.2-3.4 s as well. So this
program stalls when a second collective sits between the gather and the gradient all-reduce,
whichever it is, while in the real train step (`main.py`, smoke config, 2 processes x 2
devices, with and without GradCache) the reduce-scatter version spent 3.6 s per step in the
gradient all-reduce and `loss.gather_rows` (the same psum + slice) steps in 0.1-0.15 s. The cause
inside XLA:CPU's gloo collectives is not known; this script is the reproduction to start from.
The stall grows with the size of the all-reduce: with a table of 4096, 8192, 16384 and 30522
rows (0.5, 1, 2 and 3.9 MB) the reduce-scatter program took 0.14, 0.53, 1.4 and 3.3 s, and with
the 38 small blocks alone under 0.1 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # run from here: -m

flags.DEFINE_integer("devices_per_process", 2, "CPU devices in each of the two processes")
flags.DEFINE_integer("table_rows", 30522, "rows of the [rows, 32] gradient (the vocabulary)")
flags.DEFINE_integer("repeats", 4, "timed calls per program")
flags.DEFINE_integer("process_id", None, "internal: set for the two child processes")
flags.DEFINE_integer("port", None, "internal: the coordinator's port")

ROWS, DIM = 16, 32  # embeddings per device


def child(process_id: int, port: int, table_rows: int, repeats: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    local = len(jax.local_devices())
    sharded = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(process_id)
    shapes = [(table_rows, DIM)] + [(DIM, DIM)] * 38  # the smoke model's gradient shapes
    grads = [
        jax.make_array_from_process_local_data(sharded, rng.random((local, *s), np.float32))
        for s in shapes
    ]
    emb = jax.make_array_from_process_local_data(
        sharded, rng.random((local * ROWS, DIM), np.float32)
    )

    def program(transpose: str):
        def body(grads, emb_BxD):
            gathered = jax.lax.all_gather(emb_BxD, "data", tiled=True)
            if transpose == "reduce_scatter":
                emb_BxD = jax.lax.psum_scatter(gathered, "data", scatter_dimension=0, tiled=True)
            elif transpose == "psum_slice":
                start = jax.lax.axis_index("data") * ROWS
                emb_BxD = jax.lax.dynamic_slice_in_dim(jax.lax.psum(gathered, "data"), start, ROWS)
            else:
                emb_BxD = gathered[:ROWS]
            # As in the backward pass, the parameter gradients depend on the embeddings' cotangent.
            weight = jnp.mean(emb_BxD)
            return [jax.lax.psum(g[0] * weight, "data") for g in grads], emb_BxD

        fn = jax.shard_map(
            body, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=(P(), P("data"))
        )
        return jax.jit(fn)

    for name, transpose in (
        ("all_gather", ""),
        ("all_gather+reduce_scatter", "reduce_scatter"),
        ("all_gather+psum_slice", "psum_slice"),
    ):
        fn = program(transpose)
        jax.block_until_ready(fn(grads, emb))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(grads, emb))
            times.append(time.perf_counter() - t)
        times.sort()
        if process_id == 0:
            print(
                json.dumps(
                    {
                        "program": name,
                        "devices_per_process": local,
                        "fastest_s": round(times[0], 3),
                        "median_s": round(times[len(times) // 2], 3),
                    }
                ),
                flush=True,
            )


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.process_id is not None:
        child(f.process_id, f.port, f.table_rows, f.repeats)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={f.devices_per_process}",
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.collectives",
                f"--process_id={i}",
                f"--port={port}",
                f"--repeats={f.repeats}",
                f"--table_rows={f.table_rows}",
            ],
            env=env,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    if any(codes):
        raise SystemExit(f"a process failed: exit codes {codes}")


if __name__ == "__main__":
    app.run(main)
