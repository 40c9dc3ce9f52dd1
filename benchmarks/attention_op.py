"""One attention op (scores, softmax, context) in XLA:CPU and in torch, a dense matmul for scale.

    python -m benchmarks.attention_op [--batch=64] [--heads=12] [--length=256] [--head_dim=32]
        [--grad] [--st_python=/path/to/venv-with-torch/bin/python] [--repeats=3]

From the probe behind issue 23 (/work/shared/probes/attention_op.py, 2026-12-01), extended. One
[B x H x L x L] attention over a batch whose texts fill 50-100% of their rows (the padded keys
masked by an additive bias, as in the encoder), timed after a warm-up call, the fastest of
`--repeats`, interleaved:

- `softmax`: the form model.attention had before (scores from [B, L, H, K] operands, softmax of
  scores + bias, probabilities x values);
- `model`: model.attention itself (head-major operands, the normalisation after the second
  product);
- each on one device and split over two host devices by batch (shard_map);
- the dense layer's [B * L, H * K] x [H * K, 4 * H * K] product.

`--grad` times forward+backward (the gradient of a sum of squares of the context) instead.
With `--st_python`, torch's unfused form and its fused `scaled_dot_product_attention` on the
same shapes run in a subprocess of that interpreter, after ours. One JSON line per case.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_integer("batch", 64, "B, texts")
flags.DEFINE_integer("heads", 12, "H")
flags.DEFINE_integer("length", 256, "L, tokens per row")
flags.DEFINE_integer("head_dim", 32, "K")
flags.DEFINE_boolean("grad", False, "time forward+backward instead of forward")
flags.DEFINE_integer("repeats", 3, "timed calls per case (the fastest is reported)")
flags.DEFINE_string("st_python", "", "python of a venv with torch: also time torch's forms")
flags.DEFINE_boolean("torch_worker", False, "internal: run the torch side")


def _inputs(np, b, h, length, k):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((b, length, h, k), np.float32)
    valid = np.arange(length)[None] < rng.integers(length // 2, length + 1, b)[:, None]
    return q, valid


def _timed(fn, block, repeats):
    block(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t)
    return round(min(times), 3)


def torch_side(f) -> list[dict]:
    import numpy as np
    import torch

    q, valid = _inputs(np, f.batch, f.heads, f.length, f.head_dim)
    q = torch.from_numpy(q).transpose(1, 2).contiguous().requires_grad_(f.grad)  # [B, H, L, K]
    mask = torch.from_numpy(valid[:, None, None, :] & valid[:, None, :, None])
    bias = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)

    def unfused():
        s = q @ q.transpose(-1, -2) / math.sqrt(f.head_dim) + bias
        return torch.softmax(s, dim=-1) @ q

    def fused():
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    def run(fn):
        if not f.grad:
            with torch.no_grad():
                return fn()
        (fn() ** 2).sum().backward()
        return q.grad

    out = []
    for name, fn in [("torch unfused", unfused), ("torch scaled_dot_product_attention", fused)]:
        seconds = _timed(lambda fn=fn: run(fn), lambda x: x, f.repeats)
        out.append({"case": name, "threads": torch.get_num_threads(), "seconds": seconds})
    x = torch.ones(f.batch * f.length, f.heads * f.head_dim)
    w = torch.ones(f.heads * f.head_dim, 4 * f.heads * f.head_dim)
    with torch.no_grad():
        out.append(
            {"case": "torch dense", "seconds": _timed(lambda: x @ w, lambda y: y, f.repeats)}
        )
    return out


def softmax_attention(q, k, v, bias, dropout_rate, is_training):
    """model.attention before issue 23: softmax of the scores, then the product with v."""
    import jax
    import jax.numpy as jnp

    del dropout_rate, is_training
    q = q * jnp.asarray(1 / math.sqrt(q.shape[-1]), q.dtype)
    scores = jnp.einsum("bqhk,bthk->bhqt", q, k).astype(jnp.float32)
    probs = jax.nn.softmax(scores + bias, axis=-1).astype(q.dtype)
    return jnp.einsum("bhqt,bthk->bqhk", probs, v)


def main(argv):
    del argv
    f = flags.FLAGS
    if f.torch_worker:
        print("RESULT " + json.dumps(torch_side(f)), flush=True)
        return
    import distributed

    distributed.use_host_devices(2)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import model as model_lib

    q, valid = _inputs(np, f.batch, f.heads, f.length, f.head_dim)
    allowed = valid[:, None, :] & valid[:, :, None]
    bias = np.where(allowed, 0.0, np.finfo(np.float32).min)[:, None].astype(np.float32)
    forms = {"softmax": softmax_attention, "model": model_lib.attention}
    mesh = jax.make_mesh((2,), ("d",), devices=jax.devices()[:2])
    one = jax.devices()[0]
    shape = f"[{f.batch} x {f.heads} x {f.length} x {f.length}]"
    results, outputs = [], {}
    for form, attend in forms.items():

        def fn(q, bias, attend=attend):
            out = attend(q, q, q, bias, 0.0, False)
            if not f.grad:
                return out
            return jax.grad(lambda q: (attend(q, q, q, bias, 0.0, False) ** 2).sum())(q)

        two = jax.shard_map(fn, mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P("d"))
        for devices, compiled, args in [
            (1, jax.jit(fn), (jax.device_put(q, one), jax.device_put(bias, one))),
            (
                2,
                jax.jit(two),
                tuple(jax.device_put(x, NamedSharding(mesh, P("d"))) for x in (q, bias)),
            ),
        ]:
            seconds = _timed(lambda c=compiled, a=args: c(*a), jax.block_until_ready, f.repeats)
            outputs[(form, devices)] = np.asarray(compiled(*args))
            results.append({"case": f"{form}, {devices} device(s)", "seconds": seconds})
    base = outputs[("softmax", 1)]
    for r, out in zip(results, outputs.values(), strict=True):
        r["max_abs_diff_from_softmax_1"] = float(f"{np.abs(out - base).max():.2g}")
    x = jax.device_put(np.ones((f.batch * f.length, f.heads * f.head_dim), np.float32), one)
    w = jax.device_put(np.ones((f.heads * f.head_dim, 4 * f.heads * f.head_dim), np.float32), one)
    dense = jax.jit(jnp.matmul)
    results.append(
        {"case": "dense", "seconds": _timed(lambda: dense(x, w), jax.block_until_ready, f.repeats)}
    )
    if f.st_python:
        cmd = [f.st_python, "-m", "benchmarks.attention_op", "--torch_worker"]
        cmd += [
            f"--{k}={getattr(f, k)}" for k in ("batch", "heads", "length", "head_dim", "repeats")
        ]
        cmd += ["--grad" if f.grad else "--nograd"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd())
        lines = [x for x in proc.stdout.split("\n") if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"torch side failed:\n{proc.stderr[-4000:]}")
        results += json.loads(lines[-1][len("RESULT ") :])
    for r in results:
        r.update(op=shape, grad=f.grad)
        print(json.dumps(r), flush=True)
    print(json.dumps({"load_average": [round(x, 1) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    app.run(main)
