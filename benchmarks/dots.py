"""Where a packed MiniLM-L6 train step spends its time on CPU: dense vs attention matmuls.

    python -m benchmarks.dots [--rows=40] [--length=128] [--repeats=10]

Times, after one warm-up call each, the two kinds of matrix product of one encoder layer at a
[rows, length] packed batch (12 heads of 32, hidden 384, FFN 1536): the dense layers' product
([rows * length, 384] x [384, 1536]) and the attention's batched products ([rows, 12] of
[length, 32] x [32, length], scores then scores x values), each under XLA:CPU's default dot
library (YNNPACK), its Eigen dots and its oneDNN and XNNPACK options (per-compilation options, so
one process compares them). Prints one JSON line per setting: the fastest time, GFLOP/s and the
CPU cores busy during the timed calls (process CPU time / wall time; 2 = both cores of this VM).

On the 2-core VM of docs/benchmarks.md every library ran the batched attention products on one
core (1.09-1.12 cores busy, 16-33 GFLOP/s) and the dense product on both (1.93-2.0 busy, 75-160
GFLOP/s, the spread being this VM's run-to-run noise): the measurement behind docs/notes/'
account of why attention costs a packed step so much here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

flags.DEFINE_integer("rows", 40, "packed rows per batch")
flags.DEFINE_integer("length", 128, "tokens per row")
flags.DEFINE_integer("repeats", 10, "timed calls per setting")

HEADS, HEAD_DIM, HIDDEN, FFN = 12, 32, 384, 1536
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}
DOTS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
LIBRARIES = {  # name -> XLA compiler options
    "ynnpack (default)": None,
    "eigen": NO_YNN,
    "onednn": {**NO_YNN, "xla_cpu_experimental_onednn_fusion_type": DOTS},
    "xnnpack": {**NO_YNN, "xla_cpu_experimental_xnn_fusion_type": DOTS},
}


def time_call(fn: Callable, args: Sequence[jax.Array], repeats: int) -> tuple[float, float]:
    """(fastest wall seconds, CPU cores busy over all timed calls) of fn(*args)."""
    jax.block_until_ready(fn(*args))
    times, cpu0, wall0 = [], os.times(), time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    cpu1, wall = os.times(), time.perf_counter() - wall0
    busy = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / wall
    return min(times), busy


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    rng = np.random.default_rng(0)
    tokens = f.rows * f.length
    x = jnp.asarray(rng.standard_normal((tokens, HIDDEN), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((HIDDEN, FFN), dtype=np.float32))
    q, k = (
        jnp.asarray(rng.standard_normal((f.rows, f.length, HEADS, HEAD_DIM), dtype=np.float32))
        for _ in range(2)
    )

    def attention(q, k):  # the encoder's two einsums, with k standing in for the values
        scores = jnp.einsum("bqhk,bthk->bhqt", q, k)
        return jnp.einsum("bhqt,bthk->bqhk", scores, k)

    cases = {
        "dense": (lambda x, w: x @ w, (x, w), 2 * tokens * HIDDEN * FFN),
        "attention": (attention, (q, k), 2 * 2 * f.rows * HEADS * f.length**2 * HEAD_DIM),
    }
    for library, options in LIBRARIES.items():
        for case, (fn, args, flops) in cases.items():
            try:
                compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
            except Exception as e:  # an option this jaxlib build does not have
                print(json.dumps({"library": library, "case": case, "error": str(e)[:200]}))
                continue
            seconds, busy = time_call(compiled, args, f.repeats)
            print(
                json.dumps(
                    {
                        "library": library,
                        "case": case,
                        "shape": [f.rows, f.length],
                        "ms": round(seconds * 1e3, 2),
                        "gflop_s": round(flops / seconds / 1e9, 1),
                        "cores_busy": round(busy, 2),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
