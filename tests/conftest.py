"""Test set-up: 8 fake CPU devices, so sharding is tested without accelerators.

Set before JAX initialises its backends (big_vision's tests do the same).
"""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import tempfile  # noqa: E402

# pytest imports tracemalloc lazily, inside its hook for exceptions raised in
# finalizers. If such a finalizer runs while TFDS imports under etils'
# `lazy_imports` (which hands out lazy stand-ins for modules), that import
# breaks and the hook fails the test at hand (seen in CI on a tfds import).
# Imported here, it is already loaded when the hook needs it.
import tracemalloc  # noqa: E402,F401

import jax  # noqa: E402

# Many tests compile the same tiny programs; a persistent cache shared by the
# test processes compiles each once (it is keyed by the program and flags).
jax.config.update(
  'jax_compilation_cache_dir', os.path.join(tempfile.gettempdir(), 'resnet_jax_test_jax_cache')
)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
