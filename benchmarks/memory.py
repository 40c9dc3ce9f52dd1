"""Peak memory and time of one MiniLM-L6 train step, with and without GradCache.

Not a test: a benchmark whose figures go into docs/benchmarks.md. Each configuration runs in a fresh
subprocess, so its peak RSS (getrusage ru_maxrss) is its own; XLA's compiled memory plan
(`memory_analysis()`) is reported next to it. The step is what main.py jits: embed the batch
(anchors and positives, one text per row), symmetric MNRL loss, AdamW update; GradCache chunks
count rows (texts), as `loss.cache_chunk_size` does in the trainer.

A configuration whose compiled plan needs more than `--max-gib` is compiled but not run (an
out-of-memory kill on a shared machine would hit other processes too); its line says so.

  python -m benchmarks.memory                      # batch 2048 pairs x 128 tokens, chunk 128
  python -m benchmarks.memory --compile-only       # XLA's memory plans only, no step run
  python -m benchmarks.memory --batch-size 32      # a size where the uncached step also runs
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # run from here: -m

# One CPU device whatever the caller's environment says (the tests ask for 8 fake ones).
os.environ["XLA_FLAGS"] = " ".join(
    flag
    for flag in os.environ.get("XLA_FLAGS", "").split()
    if not flag.startswith("--xla_force_host_platform_device_count")
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

GIB = 2**30


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def run_one(batch_size: int, max_len: int, chunk: int, max_gib: float, execute: bool) -> dict:
    """Build, compile and (if it fits) run one train step; returns the figures."""
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import optax

    import loss as loss_lib
    import model as model_lib

    config = model_lib.EncoderConfig()  # MiniLM-L6: V 30522, D 384, 6 layers, 12 heads, F 1536
    embed = model_lib.make_embed_fn(config, pooling="mean", normalize=True)
    optimizer = optax.adamw(2e-5, weight_decay=0.01)

    def embed_fn(params: hk.Params, rows: dict, rng: jax.Array) -> jax.Array:
        return embed.apply(params, rng, rows["ids_RxL"], rows["segments_RxL"], True)[:, 0]

    def loss_fn(emb_RxD: jax.Array):
        # Rows 0..B-1 are the anchors, rows B..2B-1 their positives.
        return loss_lib.mnrl_loss(emb_RxD[:batch_size], emb_RxD[batch_size:], symmetric=True)

    def step(params, opt_state, rows, rng):
        (value, metrics), grads = loss_lib.embedding_value_and_grad(
            embed_fn, loss_fn, params, rows, rng, cache_chunk_size=chunk or None
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, metrics

    # Jitted: op-by-op initialisation compiles every initialiser separately, which is slower.
    params = jax.jit(model_lib.init_params, static_argnums=(0, 1))(config, 0)
    opt_state = optimizer.init(params)
    rows = 2 * batch_size
    rng = jax.random.key(0)
    # Random token ids and full-length texts: the worst case for a max_len budget.
    ids = jax.random.randint(jax.random.key(1), (rows, max_len), 1000, config.vocab_size)
    segments = jnp.ones((rows, max_len), jnp.int32)
    inputs = {"ids_RxL": ids.astype(jnp.int32), "segments_RxL": segments}

    jitted = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = jitted.lower(params, opt_state, inputs, rng).compile()
    result = {
        "batch_pairs": batch_size,
        "texts": rows,
        "max_len": max_len,
        "gradcache_chunk": chunk or None,
        "compile_s": round(time.perf_counter() - t0, 1),
    }
    analysis = compiled.memory_analysis()
    planned = None
    if analysis is not None:
        planned = (
            analysis.temp_size_in_bytes
            + analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes
        )
        result["compiled_temp_gib"] = round(analysis.temp_size_in_bytes / GIB, 2)
        result["compiled_args_gib"] = round(analysis.argument_size_in_bytes / GIB, 2)
        result["compiled_total_gib"] = round(planned / GIB, 2)
    budget = min(max_gib * GIB, 0.8 * _available_bytes())
    if not execute:
        result["ran"] = False
        result["why_not_run"] = "--compile-only"
    elif planned is not None and planned > budget:
        result["ran"] = False
        result["why_not_run"] = (
            f"plan {planned / GIB:.1f} GiB > budget {budget / GIB:.1f} GiB "
            f"(--max-gib {max_gib}, 80% of MemAvailable)"
        )
    else:
        t0 = time.perf_counter()
        params, opt_state, value, _ = compiled(params, opt_state, inputs, rng)
        jax.block_until_ready(params)
        result["ran"] = True
        result["step_s"] = round(time.perf_counter() - t0, 1)
        result["loss"] = round(float(value), 4)
    # Linux reports ru_maxrss in KiB; it covers compilation and the step, the whole process.
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2048, help="pairs per step")
    parser.add_argument("--max-len", type=int, default=128, help="tokens per text")
    parser.add_argument("--chunk", type=int, default=128, help="GradCache rows per chunk")
    parser.add_argument("--max-gib", type=float, default=16.0, help="run only plans under this")
    parser.add_argument("--compile-only", action="store_true", help="plans only, no step")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:  # one configuration, in this fresh process
        print(
            json.dumps(
                run_one(
                    args.batch_size, args.max_len, args.child, args.max_gib, not args.compile_only
                )
            )
        )
        return

    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {_available_bytes() / GIB:.1f} GiB free"
    )
    for chunk in (0, args.chunk):
        cmd = [sys.executable, "-m", "benchmarks.memory", "--child", str(chunk)]
        cmd += ["--batch-size", str(args.batch_size), "--max-len", str(args.max_len)]
        cmd += ["--max-gib", str(args.max_gib)] + (["--compile-only"] if args.compile_only else [])
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            record = {
                "gradcache_chunk": chunk or None,
                "error": f"exit {done.returncode}",
                "stderr_tail": done.stderr[-2000:],
            }
        else:
            record = json.loads(done.stdout.strip().splitlines()[-1])
        record["wall_s"] = round(time.perf_counter() - t0, 1)
        record["machine"] = machine
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
