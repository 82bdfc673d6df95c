"""The JAX distributed runtime: starting it, the device mesh, global arrays
from per-process data, and stopping many hosts together.

One process per host (TPU VM worker, GPU node or SLURM task) runs the same
command. `initialize` starts JAX's coordination service from JAX's own flags
(`--coordinator_address --num_processes --process_id`) or, without them, from
the cluster JAX detects itself (TPU pods, SLURM, Open MPI); with neither, it
is one process and nothing starts.

`StopRequest` turns SIGTERM (preemption) and Ctrl-C into a step at which
*every* process stops: with the runtime up, the coordination service's
preemption sync point picks that step (a process that stopped alone would
wait forever in the next collective); in one process, a signal handler.
"""

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding

from resnet_jax import errors

# Bounds on waiting for other processes, in seconds (JAX's defaults are 300,
# 100 and 300). A dead process makes the others fail after about
# `HEARTBEAT_TIMEOUT` (the coordination service then aborts them, exit != 0)
# instead of hanging; long enough for a slow host to start or to compile.
INITIALIZATION_TIMEOUT = 300
HEARTBEAT_TIMEOUT = 60
SHUTDOWN_TIMEOUT = 60
# How long a stop request waits for the step boundary before giving up.
STOP_GRACE_S = 60

_state = {'initialized': False}


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto_detect: bool = True,
  heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
  initialization_timeout: int = INITIALIZATION_TIMEOUT,
  shutdown_timeout: int = SHUTDOWN_TIMEOUT,
) -> bool:
  """Starts the distributed runtime if asked or if JAX detects a cluster.

  Args:
    coordinator_address: 'host:port' of process 0's coordination service.
    num_processes, process_id: this job's process count and this process's
      index; all three or none (then JAX's cluster detection fills them).
    auto_detect: without explicit flags, let JAX detect a TPU pod, SLURM job
      or Open MPI launch; off: one process.
    heartbeat_timeout, initialization_timeout, shutdown_timeout: seconds; see
      the module constants.

  Returns:
    Whether the runtime was started (False: a single process, nothing to do).
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise errors.ConfigError(
      'give all of --coordinator_address=HOST:PORT, --num_processes=N and '
      '--process_id=I (or none, to let JAX detect the cluster)'
    )
  if _state['initialized']:
    return True
  # CPU processes need a collectives library to talk to each other (tests,
  # local multi-process runs); accelerators have their own and ignore this.
  if jax.config.jax_cpu_collectives_implementation in (None, 'none', ''):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = dict(
    initialization_timeout=initialization_timeout,
    heartbeat_timeout_seconds=heartbeat_timeout,
    shutdown_timeout_seconds=shutdown_timeout,
  )
  if coordinator_address is not None:
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
  elif auto_detect:
    try:
      jax.distributed.initialize(**kwargs)
    except ValueError as e:  # No cluster detected: one process.
      logging.info('no cluster detected (%s): running as one process', e)
      return False
  else:
    return False
  _state['initialized'] = True
  return True


def is_initialized() -> bool:
  """Whether `initialize` started the runtime in this process."""
  return _state['initialized']


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh with one `data` axis over all (or the given) devices.

  `jax.make_mesh` orders the devices by the physical topology (TPU torus,
  hosts), so neighbours on the axis are neighbours on the interconnect. Auto
  axes: the step is one GSPMD program, shardings given at its boundary.
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)


def to_global(local_batch, sharding: NamedSharding):
  """This process's numpy share of a batch -> global `jax.Array`s with
  `sharding` (its batch axis over `data`); every process calls it."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def put_replicated(arrays: dict, sharding: NamedSharding) -> dict:
  """Host arrays, the same in every process -> device arrays with `sharding`
  (replicated), built from each process's own copy."""
  return {
    k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
    for k, v in arrays.items()
  }


def all_true(value: bool) -> bool:
  """True only if `value` is True in every process (a collective)."""
  if jax.process_count() == 1:
    return bool(value)
  values = multihost_utils.process_allgather(np.asarray(value, np.int32))
  return bool(np.all(values))


def sync(name: str):
  """Waits until every process gets here (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class StopRequest:
  """SIGTERM or Ctrl-C -> the step at which every process stops and saves.

  Use as a context manager; call `reached(step)` once after each step, in
  every process, with the same steps. The first Ctrl-C asks for a save and a
  clean stop, like SIGTERM; a second one ends the process at once (exit 130,
  nothing saved), wherever it waits. A stop that reaches no step boundary
  within `STOP_GRACE_S` (plus twice the slowest step seen: a read or a device
  that blocks) ends the process with exit 1 and one line: `kept()` says which
  checkpoint is the last good one.
  """

  def __init__(self, kept: Callable[[], str] | None = None):
    self.signal_name = None
    self._distributed = is_initialized()
    self._local = False
    self._previous = {}
    self._kept = kept
    self._timer = None
    self._last_reached, self._slowest = None, 0.0

  def __enter__(self):
    signums = [signal.SIGINT] + ([] if self._distributed else [signal.SIGTERM])
    for signum in signums:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # Not the main thread: signals keep their handlers.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:  # A stop is under way.
      if signum == signal.SIGINT:
        _exit_now(130, errors.INTERRUPTED)
      return
    self.signal_name = 'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'
    print(
      f'{self.signal_name}: saving a checkpoint after the current step '
      '(Ctrl-C again to stop without saving)',
      file=sys.stderr,
      flush=True,
    )
    self._start_timer()
    if self._distributed and signum == signal.SIGINT:
      # JAX's preemption notifier listens for SIGTERM: pass Ctrl-C on to it,
      # so that the other processes agree on the same stopping step.
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      self._local = True

  def _start_timer(self):
    grace = STOP_GRACE_S + 2 * self._slowest
    # A thread, not the main one: that may be the one blocked.
    self._timer = threading.Timer(grace, self._give_up, args=(grace,))
    self._timer.daemon = True
    self._timer.start()

  def _give_up(self, grace: float):
    kept = self._kept() if self._kept is not None else ''
    _exit_now(
      1,
      f'error: {self.signal_name}: no step finished within {grace:.0f} s of it (a read '
      f'or a device that does not answer); stopped without saving. {kept}'.rstrip(),
    )

  def reached(self, step: int) -> bool:
    """Whether every process stops after `step` (the same answer everywhere)."""
    now = time.monotonic()
    if self._last_reached is not None:
      self._slowest = max(self._slowest, now - self._last_reached)
    self._last_reached = now
    if self._distributed:
      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      stop = self._local
    if stop and self._timer is not None:
      self._timer.cancel()
    return stop

  def __exit__(self, *exc):
    if self._timer is not None:
      self._timer.cancel()
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


def _exit_now(code: int, line: str):
  """Ends the process at once with one line on stderr: no clean-up runs, so
  nothing can block it (Orbax never commits a checkpoint half-written)."""
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  print(line, file=sys.stderr, flush=True)
  os._exit(code)
