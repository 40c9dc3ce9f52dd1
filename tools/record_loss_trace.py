"""Bit-exact trace of short smoke runs (losses, gradient norms, a hash of the final params).

tests/main_test.py::test_guide_off_is_bit_identical_to_before_the_guide runs the same with the
current code (loss.guide = '') and requires every bit to match the trace recorded from the
commit the guided loss is based on (main at 2c33509; first recorded from 8f23482, re-recorded
after the rebase onto main, whose model.attention (09422a7) changed the last bits):

    git -C /work/main worktree add --detach /tmp/base 2c33509
    python tools/record_loss_trace.py --repo=/tmp/base \
        --out=tests/fixtures/smoke_loss_trace.json

(8 fake CPU devices, as in the tests; the same jaxlib, on x86-64 CPU.) A change that alters the
numbers on purpose re-records the trace with its own commit and says so. Re-recorded on
2026-12-02 from a9b0b2f (python tools/record_loss_trace.py --repo=. --out=...): packing's
balanced device shares (854048d) deal the smoke batches' examples to other devices, so dropout
and the sums differ.

The bits are also specific to the CPU (the EPYC's trace failed on the Xeon with unchanged code), so
the fixture holds one trace per CPU, keyed by `cpu_signature()`, and this tool adds or replaces the
running machine's trace in --out, keeping the others. Recorded from a9b0b2f: on the Intel Xeon VM
(GenuineIntel family 6 model 207) on 2026-12-02 00:33 UTC, on the AMD EPYC VM (AuthenticAMD
family 25 model 17) on 2026-12-02 05:13 UTC, and on the AMD EPYC VM (AuthenticAMD family 25
model 1) on 2026-12-02 16:06 UTC. On a CPU with no trace the test compares the losses
and gradient norms to 1e-4 relative against every recorded trace instead of bit for bit.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile

# The runs of the trace: overrides of configs/base.py:smoke.
RUNS = {
    "smoke": {"total_steps": 4, "checkpoint_every": 4},
    "smoke_gradcache": {"total_steps": 4, "checkpoint_every": 4, "loss.cache_chunk_size": 2},
}


def cpu_signature() -> str:
    """The CPU as /proc/cpuinfo names it: vendor, family and model ("GenuineIntel family 6 model
    207"); platform.processor() where there is no /proc/cpuinfo. The same signature as
    results.cpu_description's, written out here on purpose: this tool imports the project's
    modules from --repo (an older checkout), so importing results.py first would mix two
    versions of the code in one process."""
    import platform

    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if {"vendor_id", "cpu family", "model"} <= set(fields):
        return f"{fields['vendor_id']} family {fields['cpu family']} model {fields['model']}"
    return platform.processor() or platform.machine()


def params_digest(params) -> str:
    """SHA-256 over every parameter's name, dtype, shape and bytes, in sorted order."""
    import jax
    import numpy as np

    h = hashlib.sha256()
    for path, leaf in sorted(
        jax.tree_util.tree_leaves_with_path(params), key=lambda x: jax.tree_util.keystr(x[0])
    ):
        x = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)} {x.dtype} {x.shape}".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def trace(overrides: dict, workdir: str) -> dict:
    """Train the smoke config with `overrides` in `workdir`; the exact numbers it produced."""
    import main
    from configs import base

    c = base.get_config("smoke")
    c.compilation_cache_dir = ""
    for key, value in overrides.items():
        *groups, name = key.split(".")
        node = c
        for g in groups:
            node = node[g]
        node[name] = value
    out = main.train(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if '"loss"' in line]
    return {
        "loss": [float(r["loss"]).hex() for r in records],
        "grad_norm": [float(r["grad_norm"]).hex() for r in records],
        "params_sha256": params_digest(out["params"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", required=True, help="checkout whose code runs the trace")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    repo, out = os.path.abspath(args.repo), os.path.abspath(args.out)
    sys.path.insert(0, repo)
    os.chdir(repo)
    import subprocess

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    result = {"cpu": cpu_signature(), "commit": commit, "devices": 8, "runs": {}}
    for name, overrides in RUNS.items():
        with tempfile.TemporaryDirectory() as tmp:
            result["runs"][name] = trace(overrides, tmp)
    traces = []
    if os.path.exists(out):
        with open(out) as f:
            traces = [t for t in json.load(f)["traces"] if t["cpu"] != result["cpu"]]
    with open(out, "w") as f:
        json.dump({"traces": traces + [result]}, f, indent=1)
        f.write("\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
