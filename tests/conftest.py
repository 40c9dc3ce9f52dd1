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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Compiled programs kept between test runs (JAX's persistent cache, keyed by the program, the
# flags and the jaxlib version): a second run skips most compilation, which is most of the quick
# loop's time (tests/model_test.py: 68 s cold, 23 s warm on the 2-core VM). Tests run a main.py
# of their own pass their own cache. JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The tests import the top-level modules (model.py, loss.py, ...) of the repository.
sys.path.insert(0, ROOT)
