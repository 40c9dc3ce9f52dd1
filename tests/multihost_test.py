"""Multi-host training with real processes on one machine (JAX's distributed runtime, gloo).

Two `main.py` processes with 2 fake CPU devices each, coordinator and collectives on 127.0.0.1,
against one process on 4 devices (this pytest process, on a 4-device mesh): same global batch,
same losses and final params. Then one of the two dies (SIGKILL) or hangs (SIGSTOP) mid-run:
the other stops with a message instead of waiting forever, and running both again resumes
from the last checkpoint to the same params. Every subprocess has a deadline and is killed
when its test ends.
"""

import itertools
import json
import os
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

import checkpoint
import convert
import distributed
import main
from configs import base

pytestmark = pytest.mark.slow  # several processes, trainer runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
# Dropout off, as issue 9 asks (the keys would match anyway: they fold in the mesh position).
CONFIG_ARG = f"smoke,model.dropout_rate=0.0,total_steps={STEPS},checkpoint_every=4"
STEP_TIMEOUT_S = 20  # a smoke step takes ~0.1 s; the margin covers a peer compiling a new shape
RUN_TIMEOUT_S = 400  # one two-process run: imports and compilation on a busy machine
FAULT_AT_STEP = 6  # after the checkpoint at step 4, before the one at step 8
_RUNS = itertools.count()  # log file names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(workdir) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                out.setdefault(r["step"], []).append(r["loss"])
    return out


@pytest.fixture
def spawn():
    """Starts subprocesses; whatever still runs when the test ends is killed."""
    started: list[subprocess.Popen] = []

    def start(cmd, env, log_path) -> subprocess.Popen:
        with open(log_path, "w") as log:
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def _start_two_processes(spawn, workdir, cache_dir, fault=None) -> dict:
    """main.py as 2 processes x 2 CPU devices; `fault` = (process, signal name) at step 6."""
    port = _free_port()
    flags_ = os.environ.get("XLA_FLAGS", "").split()  # conftest's 8 devices: replaced here
    xla_flags = [f for f in flags_ if "xla_force_host_platform_device_count" not in f]
    procs, run_id = [], next(_RUNS)
    for i in range(2):
        env = dict(
            os.environ,
            XLA_FLAGS=" ".join([*xla_flags, "--xla_force_host_platform_device_count=2"]),
            JAX_PLATFORMS="cpu",
            # The coordinator listens on loopback only (JAX's default is every interface).
            JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
            # Later runs reuse the first one's compilations (about a minute each here).
            JAX_COMPILATION_CACHE_DIR=cache_dir,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            PYTHONUNBUFFERED="1",
        )
        # The faulty process runs main.py through tests/fixtures/fault_main.py, whose hook
        # (train's on_event) sends it the signal once step FAULT_AT_STEP is done.
        script = ["main.py"]
        if fault and fault[0] == i:
            script = ["tests/fixtures/fault_main.py", f"--fault=step@{FAULT_AT_STEP}:{fault[1]}"]
        cmd = [
            sys.executable,
            *script,
            f"--config=configs/base.py:{CONFIG_ARG}",
            f"--config.step_timeout_s={STEP_TIMEOUT_S}",
            f"--workdir={workdir}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        ]
        log = f"{workdir}.{run_id}.{i}.log"
        procs.append((spawn(cmd, env, log), log))
    return {"procs": procs, "t0": time.monotonic()}


def _wait(run: dict, only=None) -> list[dict]:
    """Each process's rc, exit time (s after the start) and output; fails past the deadline.

    `only`: the processes to wait for (the others, stopped, are killed).
    """
    procs, t0 = run["procs"], run["t0"]
    waited = set(range(len(procs)) if only is None else only)
    exits: dict[int, float] = {}
    while not waited <= set(exits) and time.monotonic() - t0 < RUN_TIMEOUT_S:
        for i, (p, _) in enumerate(procs):
            if i not in exits and p.poll() is not None:
                exits[i] = time.monotonic() - t0
        time.sleep(0.2)
    results = []
    for i, (p, log) in enumerate(procs):
        if i not in waited and p.poll() is None:
            p.kill()
            p.wait()
        if p.poll() is None:  # the spawn fixture kills it
            pytest.fail(f"process {i} still runs after {RUN_TIMEOUT_S} s:\n{_tail(log)}")
        with open(log) as f:
            results.append({"rc": p.returncode, "t": exits.get(i, RUN_TIMEOUT_S), "out": f.read()})
    return results


def _tail(log_path, n=4000) -> str:
    with open(log_path) as f:
        return f.read()[-n:]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("compilation_cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(a) One process, 4 devices: this pytest process on a 4-device mesh."""
    workdir = tmp_path_factory.mktemp("one_process")
    t0 = time.monotonic()
    summary = main.train(base.get_config(CONFIG_ARG), str(workdir), devices=jax.devices()[:4])
    return {
        "losses": _losses(workdir),
        "params": summary["params"],
        "seconds": time.monotonic() - t0,
    }


def _assert_matches_reference(workdir, reference, steps) -> tuple[float, float]:
    """Losses and exported params as the reference's (1e-5); returns the largest differences.

    A resumed run appends to metrics.jsonl: the last record of a step is the one that counts.
    """
    losses = _losses(workdir)
    got, want = [losses[s][-1] for s in steps], [reference["losses"][s][0] for s in steps]
    np.testing.assert_allclose(got, want, atol=1e-5)
    params = convert.load_model(os.path.join(workdir, "export")).params
    chex.assert_trees_all_close(params, reference["params"], atol=1e-5)
    diffs = jax.tree.leaves(
        jax.tree.map(lambda a, b: np.abs(a - b).max(), params, reference["params"])
    )
    return float(np.abs(np.subtract(got, want)).max()), float(max(diffs))


def test_two_processes_match_one(tmp_path, spawn, cache_dir, request):
    workdir = str(tmp_path / "two_processes")
    run = _start_two_processes(spawn, workdir, cache_dir)
    reference = request.getfixturevalue("reference")  # trains while the processes start
    runs = _wait(run)
    for i, r in enumerate(runs):
        assert r["rc"] == 0, f"process {i}:\n{r['out'][-4000:]}"
    loss_diff, param_diff = _assert_matches_reference(workdir, reference, range(1, STEPS + 1))
    # Process 0 alone writes metrics (one record per step), checkpoints and the export.
    assert all(len(v) == 1 for v in _losses(workdir).values())
    ckpts = os.path.join(workdir, checkpoint.CHECKPOINTS)
    assert sorted(os.listdir(ckpts)) == [f"{4:09d}", f"{8:09d}"]
    assert "exported the final model" in runs[0]["out"]
    assert "exported the final model" not in runs[1]["out"]
    losses = _losses(workdir)
    print(
        f"\n2 processes x 2 devices: {STEPS} steps, processes done {runs[0]['t']:.0f} s and "
        f"{runs[1]['t']:.0f} s after their start; 1 process x 4 devices (in-process, at the same "
        f"time) {reference['seconds']:.0f} s; losses "
        + " ".join(f"{losses[s][0]:.5f}" for s in sorted(losses))
        + f"; largest differences: loss {loss_diff:.1e}, params {param_diff:.1e}"
    )


def test_killed_process_stops_the_other_and_both_resume(tmp_path, spawn, cache_dir, reference):
    workdir = str(tmp_path / "killed")
    survivor, killed = _wait(_start_two_processes(spawn, workdir, cache_dir, (1, "SIGKILL")))
    assert killed["rc"] == -9, killed["out"][-4000:]
    # Waiting in step 7 for the dead process, the survivor gets gloo's connection error (rc 1)
    # or, if the socket says nothing, the step timeout (rc 75); either way it says what to do.
    assert survivor["rc"] in (1, distributed.StepWatchdog.EXIT_CODE), survivor["out"][-4000:]
    assert "run every process again" in survivor["out"], survivor["out"][-4000:]
    waited = survivor["t"] - killed["t"]
    assert waited < STEP_TIMEOUT_S + 30, (survivor["t"], killed["t"])
    ckpts = os.path.join(workdir, checkpoint.CHECKPOINTS)
    assert sorted(os.listdir(ckpts)) == [f"{4:09d}"]

    runs = _wait(_start_two_processes(spawn, workdir, cache_dir))
    for i, r in enumerate(runs):
        assert r["rc"] == 0, f"process {i}:\n{r['out'][-4000:]}"
        assert "resuming from step 4" in r["out"]
    _assert_matches_reference(workdir, reference, range(5, STEPS + 1))
    print(f"\nprocess 1 killed after step {FAULT_AT_STEP}: process 0 stopped {waited:.0f} s later")


def test_hung_process_times_out_the_other(tmp_path, spawn, cache_dir):
    """Process 0 (the coordinator) stops, alive: no socket error, only the step timeout."""
    workdir = str(tmp_path / "hung")
    run = _start_two_processes(spawn, workdir, cache_dir, (0, "SIGSTOP"))
    _, survivor = _wait(run, only=[1])
    assert survivor["rc"] == distributed.StepWatchdog.EXIT_CODE, survivor["out"][-4000:]
    message = f"step timeout: step {FAULT_AT_STEP + 1} has not finished after {STEP_TIMEOUT_S} s"
    assert message in survivor["out"], survivor["out"][-4000:]
    assert "process 1 of 2" in survivor["out"]
