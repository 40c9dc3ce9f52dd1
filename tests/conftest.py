"""Test set-up: 8 fake CPU devices, made before JAX initialises its backends.

XLA reads the flag when the CPU backend starts, so it must be set before the first JAX operation
(chex docs); importing this file first (pytest does) is enough.
"""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The tests import the top-level modules (model.py, loss.py, ...) of the repository.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
