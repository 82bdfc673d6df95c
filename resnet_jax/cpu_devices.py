"""One JAX CPU device per core, so that a step runs on every core of a CPU host.

JAX starts one CPU device, and XLA:CPU spreads one device's step over the
cores poorly; with one device per core the batch is split over the devices
(the step is the same sharded program as on a GPU pod) and every core works
on its share (docs/speed.md has the measurements). So, unless the user chose
a count (`JAX_NUM_CPU_DEVICES`, `XLA_FLAGS=--xla_force_host_platform_device_count`,
or `jax.config.update('jax_num_cpu_devices', n)`), every command line starts
JAX with one CPU device per usable core, at most `MAX_DEVICES`, and at most as
many as keep `MIN_BATCH_PER_DEVICE` examples of the step's batch on each
(a count that divides the batch). Hosts with an accelerator (`JAX_PLATFORMS`
naming another platform first, or a GPU/TPU plugin installed) are left as
they are, and so are multi-process runs, whose processes would share the cores.

The choice must be made before JAX starts its backends: `use_cpu_cores` is called
by `cli.run` before a command's `main`, and by a notebook right after
`import jax` (`resnet_jax.use_cpu_cores()`).
"""

import dataclasses
import importlib.metadata
import importlib.util
import os

import jax

# Measured on 2 cores with fake devices (docs/speed.md): a per-device batch of
# 16 or more keeps the step's fixed per-device costs small.
MIN_BATCH_PER_DEVICE = 16
# The largest count the step was measured at; beyond it, per-device batches
# of the paper's recipes get small and the all-reduce grows.
MAX_DEVICES = 16

_ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm7_plugin', 'libtpu')


@dataclasses.dataclass(frozen=True)
class Choice:
  """How many CPU devices this process starts with (None: JAX's own count), and why."""

  count: int | None
  reason: str


_state = {'choice': None}


def usable_cores() -> int:
  """Cores this process may run on (its affinity mask, e.g. under taskset or
  a container's cpuset), not all of the machine's."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS has no affinity masks.
    return os.cpu_count() or 1


def device_count_for(cores: int, batch_size: int | None) -> int:
  """The number of CPU devices for `cores` cores and a step of `batch_size`
  examples (None: no batch to divide): the largest count up to the cores and
  `MAX_DEVICES` that divides the batch with `MIN_BATCH_PER_DEVICE` or more
  examples on each device; 1 if there is none."""
  for count in range(min(cores, MAX_DEVICES), 1, -1):
    if batch_size is None:
      return count
    if batch_size % count == 0 and batch_size // count >= MIN_BATCH_PER_DEVICE:
      return count
  return 1


def _user_choice() -> str | None:
  """Where the user set the CPU device count themselves, if they did."""
  if os.environ.get('JAX_NUM_CPU_DEVICES'):
    return 'JAX_NUM_CPU_DEVICES'
  if 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return 'XLA_FLAGS'
  if jax.config.jax_num_cpu_devices != -1:
    return "jax.config's jax_num_cpu_devices"
  return None


def accelerator() -> str | None:
  """The accelerator JAX would run on, judged without starting a backend."""
  platforms = os.environ.get('JAX_PLATFORMS') or jax.config.jax_platforms or ''
  first = platforms.split(',')[0].strip().lower()
  if first:
    return None if first == 'cpu' else first
  for plugin in _ACCELERATOR_PLUGINS:
    if importlib.util.find_spec(plugin) is not None:
      return plugin
  if any(ep.name != 'cpu' for ep in importlib.metadata.entry_points(group='jax_plugins')):
    return 'a JAX plugin'
  return None


def use_cpu_cores(batch_size: int | None = None, num_processes: int | None = None) -> Choice:
  """Starts JAX with one CPU device per usable core, where that applies.

  Args:
    batch_size: the global batch that the devices will split (None: any).
    num_processes: the run's process count, if given on its command line.

  Returns:
    The `Choice` made (also kept for `choice()`); a second call returns the first's.
  """
  if _state['choice'] is not None:
    return _state['choice']
  cores = usable_cores()
  if (who := _user_choice()) is not None:
    choice = Choice(None, f'set by {who}')
  elif (platform := accelerator()) is not None:
    choice = Choice(None, f'JAX runs on {platform}, not the CPU')
  elif num_processes is not None and num_processes > 1:
    choice = Choice(None, 'one per process: the processes share the cores')
  else:
    count = device_count_for(cores, batch_size)
    reason = f'one per usable core ({cores})'
    if count < cores:
      reason = (
        f'{cores} usable cores, at most {MAX_DEVICES} devices, and batch {batch_size} '
        f'split into shares of {MIN_BATCH_PER_DEVICE} or more'
      )
    try:
      jax.config.update('jax_num_cpu_devices', count)
      choice = Choice(count, reason)
    except RuntimeError:  # JAX's backends already started: too late to choose.
      choice = Choice(None, 'JAX had started before the count could be set')
  _state['choice'] = choice
  return choice


def choice() -> Choice | None:
  """The `Choice` that `use_cpu_cores` made in this process (None if not called)."""
  return _state['choice']


def describe() -> str:
  """Why the CPU has the devices it has, for the start-up line and env.json."""
  made = choice()
  if made is None:
    return "JAX's default"
  return made.reason
