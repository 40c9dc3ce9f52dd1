"""Devices and processes: host CPU devices, JAX's distributed runtime, a step watchdog, replication.

The run itself (main.py) is the same in one process and in many: it calls `initialize` before
any JAX computation, puts host values on the mesh with `replicate`, and wraps its loop in a
`StepWatchdog` that ends a process stuck in a step whose peer died. docs/multihost.md says
what each process does and how to launch one run over several hosts.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

HOST_DEVICES = 2  # CPU devices a CLI splits the host into (use_host_devices), at most one a core


def use_host_devices(count: int = HOST_DEVICES) -> None:
    """Splits the CPU platform into `count` devices (at most one per core), for a CLI.

    Call it before JAX starts its backends (before the first computation). XLA:CPU runs the
    attention's batched products of one device on a single core; with a device per core, work
    split over the devices (the trainer's mesh, evaluate.encode's rows) keeps every core busy
    (docs/benchmarks.md). A choice already made wins: XLA_FLAGS'
    --xla_force_host_platform_device_count or JAX_NUM_CPU_DEVICES. Only the CPU platform reads
    the setting, so a GPU or TPU run's jax.devices() is unchanged.
    """
    if jax.config.jax_num_cpu_devices >= 0:
        return
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    jax.config.update("jax_num_cpu_devices", max(1, min(count, os.cpu_count() or 1)))


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    init_timeout_s: int = 300,
) -> bool:
    """Joins JAX's distributed runtime when asked (before any JAX computation); True if it did.

    Arguments (flags) win over JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID;
    `auto` lets JAX detect what is missing from the cluster (Cloud TPU, Slurm, Open MPI).
    Afterwards JAX's heartbeat ends every process about 100 s after one dies; the config's
    `step_timeout_s` (StepWatchdog) ends a waiting process sooner and says why.
    """
    env = os.environ
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if not auto and address is None and num_processes is None and process_id is None:
        return False  # a single-process run
    # CPU processes run their collectives over TCP with gloo (GPUs use NCCL, TPUs ICI/DCN).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        address, num_processes, process_id, initialization_timeout=init_timeout_s
    )
    return True


class StepWatchdog:
    """Ends the process when a dispatched train step has not finished within `timeout_s`.

    A process whose peer died or hangs waits in the step's collectives, possibly forever; this
    names the step and exits with EXIT_CODE (EX_TEMPFAIL: run every process again, they resume
    from the latest checkpoint). A step's clock starts at its dispatch or at its predecessor's
    end, whichever is later, so time spent by this process on data, checkpoints or evaluation
    does not count, but a peer's does. The first step after a (re)start is not timed: it waits
    for every process to compile. A thread polls `is_ready()`, so dispatch still runs ahead.
    """

    EXIT_CODE = 75

    def __init__(self, timeout_s: float, workdir: str):
        self.timeout_s, self.workdir = timeout_s, workdir
        self._pending: collections.deque = collections.deque()  # (step, output) not done yet
        self._done: int | None = None  # the last step seen finished
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)

    def __enter__(self) -> StepWatchdog:
        if self.timeout_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def dispatched(self, step: int, output: jax.Array) -> None:
        """Step `step` was dispatched; `output` (not donated later) is ready when it is done."""
        if self.timeout_s > 0:
            with self._lock:
                if not self._pending:
                    self._since = time.monotonic()
                self._pending.append((step, output))

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            now = time.monotonic()
            with self._lock:
                while self._pending and self._pending[0][1].is_ready():
                    self._done, _ = self._pending.popleft()
                    self._since = now
                late = self._done is not None and self._pending
                if not late or now - self._since < self.timeout_s:
                    continue
                step = self._pending[0][0]
            sys.stdout.flush()
            print(
                f"error: step timeout: step {step} has not finished after {self.timeout_s:g} s "
                f"(config step_timeout_s; last finished step {self._done}) in process "
                f"{jax.process_index()} of {jax.process_count()}. Another process probably died "
                "or hangs. Exiting; run every process again to resume from the latest "
                f"checkpoint in {self.workdir}.",
                file=sys.stderr,
                flush=True,
            )
            os._exit(self.EXIT_CODE)  # sys.exit would wait for the stuck step and the peers


def replicate(tree: Any, sharding: NamedSharding) -> Any:
    """Host or single-device values -> arrays replicated over the mesh of every process.

    device_put takes no single-device array as the source of a multi-process array, so every
    leaf goes through host memory (PRNG keys as their raw data). All processes must call it.
    """

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree)
