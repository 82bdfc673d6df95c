"""Test set-up: 8 fake CPU devices, so sharding is tested without accelerators.

Set before JAX initialises its backends (big_vision's tests do the same).
"""

import os
import tempfile

# LLVM at optimisation level 1 instead of 2: the suite is compile-bound (its
# programs are tiny), and level 1 compiles much faster with the same results to
# the tests' tolerances. Benchmarks and training keep XLA's defaults.
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '')
  + ' --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The command lines the tests start get glibc's huge pages from the start,
# instead of starting themselves again to get them (resnet_jax.cpu_memory).
os.environ.setdefault('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1')
# Many tests compile the same tiny programs; a persistent cache shared by the
# test processes, and by the command lines they start, compiles each once (it
# is keyed by the program, the devices and the flags).
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'resnet_jax_test_jax_cache')
)
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'

# pytest imports tracemalloc lazily, inside its hook for exceptions raised in
# finalizers. If such a finalizer runs while TFDS imports under etils'
# `lazy_imports` (which hands out lazy stand-ins for modules), that import
# breaks and the hook fails the test at hand (seen in CI on a tfds import).
# Imported here, it is already loaded when the hook needs it.
import tracemalloc  # noqa: E402,F401

# The slowest modules first: with `-n 2`, a long test started last keeps one
# worker busy while the other idles; started first, the short ones fill in
# around it. (The order within a module is kept.)
_SLOWEST_FIRST = (
  'test_multiprocess.py',
  'test_faults.py',
  'test_cifar_table.py',
  'test_notebooks.py',
  'test_main.py',
  'test_imagenet_train.py',
  'test_evaluation.py',
  'test_steps_per_dispatch.py',
  'test_models_autodiff.py',
)


def pytest_addoption(parser):
  parser.addoption(
    '--slow', action='store_true', help='also run the slow tier (pytest.mark.slow): all tests'
  )


def pytest_configure(config):
  # The slow tier: end-to-end and at-scale tests (real-data command lines,
  # several processes, notebooks, the Table 6 launcher, deep nets' derivatives,
  # fault injection into long runs, equivalences already covered by a faster
  # test at a smaller size), each marked where it is defined. `pytest tests`
  # runs the rest; `--slow` runs all.
  config.addinivalue_line('markers', 'slow: the slow tier, run only with --slow')


def pytest_collection_modifyitems(config, items):
  if not config.getoption('--slow'):
    slow = [item for item in items if item.get_closest_marker('slow')]
    config.hook.pytest_deselected(items=slow)
    items[:] = [item for item in items if not item.get_closest_marker('slow')]
  rank = {name: i for i, name in enumerate(_SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
