"""distributed.use_host_devices in fresh processes: the CPU split a CLI gets, and a choice already
made (XLA_FLAGS, JAX_NUM_CPU_DEVICES) left alone. Multi-process runs: tests/multihost_test.py."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each case starts a Python process with a fresh JAX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = (
    "import distributed, jax; distributed.use_host_devices(); "
    "print(len(jax.devices()), jax.devices()[0].platform)"
)


def _devices_after(env_changes: dict[str, str]) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", **env_changes)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    count, platform = out.stdout.split()
    return int(count), platform


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, min(2, os.cpu_count())),  # one device a core, at most HOST_DEVICES
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, 3),
        ({"JAX_NUM_CPU_DEVICES": "1"}, 1),
    ],
    ids=["default", "xla_flags", "jax_num_cpu_devices"],
)
def test_host_devices(env, want):
    assert _devices_after(env) == (want, "cpu")
