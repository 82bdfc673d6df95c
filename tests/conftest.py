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

import pytest  # noqa: E402

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


# The slow tier: end-to-end and at-scale tests (real-data command lines,
# several processes, notebooks, the Table 6 launcher, deep nets' derivatives,
# fault injection into long runs, equivalences already covered by a faster
# test at a smaller size). `pytest tests` runs the rest; `--slow` runs all.
_SLOW = (
  'test_multiprocess.py',
  'test_notebooks.py',
  'test_imagenet_train.py',
  'test_cifar_table.py::test_runs_concurrently_then_collects_and_a_rerun_skips_finished_runs',
  'test_main.py::test_readme_command_trains_and_evaluates',
  'test_models_autodiff.py::test_forward_mode_through_deep_and_imagenet_nets',
  'test_models_autodiff.py::test_jvp_and_jacfwd_match_finite_differences',
  'test_models_mask.py::test_masked_canvas_matches_each_image_alone[resnet',
  'test_models.py::test_every_option_has_its_effect[bn_group_size]',
  'test_models.py::test_resnet1202_forward_backward_compiles',
  'test_train.py::test_warmup_rule_ends_when_the_smoothed_error_crosses_the_threshold',
  'test_train.py::test_interrupt_and_resume_equals_uninterrupted[True]',
  'test_train.py::test_corrupt_latest_checkpoint_falls_back_to_the_previous[corrupt_meta]',
  'test_evaluation.py::test_ensemble_averages_the_members_scores',
  'test_evaluation.py::test_multi_scale_equals_the_unpadded_whole_image_computation',
  'test_steps_per_dispatch.py::test_loop_with_k_steps_and_resume_under_another_k',
  'test_steps_per_dispatch.py::test_k_steps_in_one_call_equal_k_single_steps',
  'test_steps_per_dispatch.py::test_strided_convolutions_in_the_loop_take_the_fast_cpu_path',
  'test_steps_per_dispatch.py::test_resident_gather_is_local_to_each_device',
  'test_faults.py::test_failed_save_stops_at_once_in_one_line_and_keeps_earlier_checkpoints',
  'test_faults.py::test_kill_during_a_save_or_the_final_eval_then_rerun_is_bit_identical',
  'test_faults.py::test_unreadable_latest_checkpoint_falls_back_quietly_and_bit_identically',
  'test_faults.py::test_second_ctrl_c_exits_130_in_one_line',
  'test_steps_per_dispatch.py::test_resume_at_a_step_that_k_does_not_divide_is_refused',
  'test_benchmark.py::test_k_steps_per_call_are_timed_per_step_with_the_split_on_the_devices',
  'test_bn_groups.py::test_sharded_equals_one_device',
  'test_responses.py::test_cli_end_to_end_on_two_trained_workdirs',
  'test_responses.py::test_collect_named_modules_matches_direct_capture',
  'test_responses.py::test_streaming_stats_match_whole_split_sharded_and_single_device',
  'test_imagenet_input.py::test_datasets_same_for_any_num_workers',
  'test_features.py::test_features_logits_are_the_logits_and_pooled_feeds_fc[resnet18]',
  'test_features.py::test_unscan_rescan_round_trip_and_unscanned_net[resnet18]',
)


def pytest_addoption(parser):
  parser.addoption(
    '--slow', action='store_true', help='also run the slow tier (conftest._SLOW): the whole suite'
  )


def _is_slow(item) -> bool:
  name = f'{item.path.name}::{item.name}'
  return any(name == s or name.startswith(s) or item.path.name == s for s in _SLOW)


def pytest_collection_modifyitems(config, items):
  slow = [item for item in items if _is_slow(item)]
  for item in slow:
    item.add_marker(pytest.mark.slow)
  if not config.getoption('--slow'):
    config.hook.pytest_deselected(items=slow)
    items[:] = [item for item in items if not _is_slow(item)]
  rank = {name: i for i, name in enumerate(_SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
