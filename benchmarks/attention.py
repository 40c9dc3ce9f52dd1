"""Attention whose cost follows each text's length, in plain XLA: does it pay on CPU? (not a test)

    python -m benchmarks.attention [--batches=60] [--timed_batch=1] [--widths=16,32,64,128]
        [--rounds=10]

The packed encoder computes attention over whole rows of 128 tokens, masked to each text's own
segment, so a 20-token text pays for 128 keys. This benchmark tries the alternative that needs
no custom kernel: the dense layers stay on the packed rows, and before attention every text's
queries, keys and values are gathered from the flat token array into a block of the smallest
width in `--widths` that holds it (padded keys masked); the context is gathered back by the
inverse map. Both gathers carry a custom VJP that is the other gather, so no scatter runs in
either direction. The variant replaces `model.attention` while the step is traced, with the
batch's gather plan as constants; everything else is the library's encoder.

It prints one JSON line each for:
- the attention FLOPs of that scheme and of exact per-text lengths, relative to packed rows,
  over `--batches` bench batches (benchmarks/throughput.py's data: the bundled mixture, batch
  64, seed 0);
- the largest embedding difference between the two encoders on the timed batch (eval mode);
- forward+backward time (train mode, dropout on) of the packed encoder and of the variant on
  batch `--timed_batch`, compiled first, then interleaved for `--rounds` rounds (min, median).

On the 2-core VM of docs/benchmarks.md: 0.60 of the attention FLOPs with the default widths,
0.42 with 16,24,32,48,64,96,128, embeddings equal to 1.3e-7, and 1-7% off the forward+backward
(batch 1, 35 rows: 3.49 against 3.60 s best, 3.70 against 3.92 s median; seven widths 3.21
against 3.42 s): the gathers take back much of what the smaller attention saves.
"""

from __future__ import annotations

import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import data as data_lib
import model as model_lib

flags.DEFINE_integer("batches", 60, "bench batches to cost the FLOPs over")
flags.DEFINE_integer("timed_batch", 1, "which of them to time")
flags.DEFINE_list("widths", ["16", "32", "64", "128"], "block widths a text may go to")
flags.DEFINE_integer("rounds", 10, "interleaved timed calls per encoder")
FLAGS = flags.FLAGS

MAX_LEN = 128
PACKED_ROWS_ATTENTION = model_lib.attention  # the library's own, before main() swaps it


@jax.custom_vjp
def take_rows(x_NxF: jax.Array, index_M: jax.Array, inverse_N: jax.Array) -> jax.Array:
    """x[index], indices past the end giving zero rows; `inverse` maps the output back to x."""
    return x_NxF.at[index_M].get(mode="fill", fill_value=0)


def _take_rows_fwd(x_NxF, index_M, inverse_N):
    return take_rows(x_NxF, index_M, inverse_N), inverse_N


def _take_rows_bwd(inverse_N, g_MxF):
    # Each row of x appears at most once in the output, so the gather's transpose (a scatter-add)
    # is the gather by the inverse map; rows that do not appear point past the end: zeros.
    return g_MxF.at[inverse_N].get(mode="fill", fill_value=0), None, None


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def gather_plan(segments_RxL: np.ndarray, widths: list[int]):
    """Per width: [n, w] flat token indices of the texts that go there (R * L = padding)."""
    rows, length = segments_RxL.shape
    blocks: dict[int, list[np.ndarray]] = {w: [] for w in widths}
    for r in range(rows):
        seg = segments_RxL[r]
        for s in np.unique(seg[seg > 0]):
            pos = np.nonzero(seg == s)[0]
            blocks[min(w for w in widths if w >= len(pos))].append(r * length + pos)
    plan = []
    for w in widths:
        if blocks[w]:
            index = np.full((len(blocks[w]), w), rows * length, np.int32)
            for i, pos in enumerate(blocks[w]):
                index[i, : len(pos)] = pos
            plan.append(index)
    return plan


def gathered_attention(plan, num_tokens: int):
    """A `model.attention` replacement that attends inside each text's gathered block."""
    index_M = np.concatenate([p.reshape(-1) for p in plan])
    inverse_N = np.full(num_tokens, len(index_M), np.int32)  # padding tokens -> zeros
    real = index_M < num_tokens
    inverse_N[index_M[real]] = np.nonzero(real)[0]

    def attention(q, k, v, bias, dropout_rate, is_training):
        del bias  # the blocks hold one text each; padded keys are masked below
        b, length, h, d = q.shape
        qkv = jnp.concatenate([q, k, v], axis=-1).reshape(b * length, 3 * h * d)
        gathered = take_rows(qkv, index_M, inverse_N)  # every block of every width, in order
        outs, start = [], 0
        for index in plan:
            n, w = index.shape
            g = gathered[start : start + n * w].reshape(n, w, h, 3 * d)
            gq, gk, gv = g[..., :d], g[..., d : 2 * d], g[..., 2 * d :]
            bias_b = np.where(index < num_tokens, 0.0, np.finfo(np.float32).min)[:, None, None]
            ctx_b = PACKED_ROWS_ATTENTION(gq, gk, gv, bias_b, dropout_rate, is_training)
            outs.append(ctx_b.reshape(n * w, h * d))
            start += n * w
        ctx = take_rows(jnp.concatenate(outs), inverse_N, index_M)
        return ctx.reshape(b, length, h, d)

    return attention


def bench_batches(count: int, m) -> list[dict[str, np.ndarray]]:
    """benchmarks/throughput.py's batches: the demo config's bundled mixture, batch 64, seed 0,
    rows of 128, featurized by the trainer's own featurizer on one device."""
    import step as step_lib
    from configs import base

    config = base.get_config("demo")
    config.data.max_seq_len = MAX_LEN
    mesh = jax.make_mesh((1,), (step_lib.AXIS,), devices=jax.devices()[:1])
    featurize = step_lib.make_featurizer(config, m, mesh)
    loader = data_lib.MixtureLoader.from_config(
        config.data, batch_size=64, seed=0, workdir=tempfile.mkdtemp()
    )
    return [featurize(loader.next_examples()) for _ in range(count)]


def main(argv):
    del argv
    import convert
    from benchmarks import throughput

    widths = sorted(int(w) for w in FLAGS.widths)
    if widths[-1] < MAX_LEN:
        raise app.UsageError(f"--widths must include one of at least {MAX_LEN}")
    m = convert.load_model(throughput._reference_model())
    batches = bench_batches(FLAGS.batches, m)

    rows_flops = blocks_flops = exact_flops = 0
    for arrays in batches:
        seg = arrays["segments_GRxL"]
        rows_flops += seg.shape[0] * MAX_LEN**2
        for index in gather_plan(seg, widths):  # one text per block; padding indexes seg.size
            blocks_flops += index.shape[0] * index.shape[1] ** 2
            exact_flops += int(((index < seg.size).sum(1).astype(np.int64) ** 2).sum())
    print(
        json.dumps(
            {
                "batches": len(batches),
                "widths": widths,
                "attention_flops_vs_packed_rows": round(blocks_flops / rows_flops, 3),
                "exact_lengths_vs_packed_rows": round(exact_flops / rows_flops, 3),
            }
        ),
        flush=True,
    )

    arrays = batches[FLAGS.timed_batch]
    ids, seg = jnp.asarray(arrays["ids_GRxL"]), jnp.asarray(arrays["segments_GRxL"])
    plan = gather_plan(arrays["segments_GRxL"], widths)
    num_segments = int(arrays["slot_BxC"].max()) + 1
    embed = model_lib.make_embed_fn(m.config, "mean", True, num_segments)  # dropout 0.1
    standard = PACKED_ROWS_ATTENTION
    gathered = gathered_attention(plan, ids.size)

    def with_attention(attend, fn):
        def wrapped(*args):
            model_lib.attention = attend  # looked up when the step is traced
            try:
                return fn(*args)
            finally:
                model_lib.attention = standard

        return wrapped

    def loss(params, rng):
        return jnp.sum(embed.apply(params, rng, ids, seg, True)[..., 0])

    def evaluate(params):
        return embed.apply(params, None, ids, seg, False)

    diff = jnp.max(
        jnp.abs(
            jax.jit(with_attention(standard, evaluate))(m.params)
            - jax.jit(with_attention(gathered, evaluate))(m.params)
        )
    )
    print(
        json.dumps(
            {
                "timed_batch": FLAGS.timed_batch,
                "rows": int(ids.shape[0]),
                "blocks": [list(p.shape) for p in plan],
                "max_abs_embedding_diff": float(diff),
            }
        ),
        flush=True,
    )

    rng = jax.random.key(0)
    steps = {}
    for name, attend in (("packed rows", standard), ("gathered blocks", gathered)):
        step = jax.jit(with_attention(attend, jax.value_and_grad(loss)))
        steps[name] = step.lower(m.params, rng).compile()
        jax.block_until_ready(steps[name](m.params, rng))
    times = {name: [] for name in steps}
    for _ in range(FLAGS.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(m.params, rng))
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        ts.sort()
        print(
            json.dumps(
                {
                    "attention": name,
                    "forward_backward_s_min": round(ts[0], 3),
                    "forward_backward_s_median": round(ts[len(ts) // 2], 3),
                    "rounds": len(ts),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
