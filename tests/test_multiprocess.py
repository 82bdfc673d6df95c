"""Real processes on the JAX distributed runtime (CPU devices, gloo collectives).

Each run is `multiprocess_worker.py` launched as N processes with a free
coordinator port and a hard time limit; the tiny CIFAR problem of
helpers.py trains in a few seconds.
"""

import functools
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from resnet_jax import checkpointing, config_lib, experiment, models, trained_workdir

pytestmark = pytest.mark.slow
WORKER = os.path.join(os.path.dirname(__file__), 'multiprocess_worker.py')
TIME_LIMIT = 240  # Seconds per run: a hang fails the test instead of CI.


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(workdir, num_processes=2, devices=2, **flags):
  """Starts the worker processes; returns them (stdout+stderr to files)."""
  address = f'localhost:{free_port()}'
  env = dict(os.environ)
  # The worker replaces conftest's device count with its own; the other XLA
  # flags and the compile cache are conftest's.
  procs = []
  for i in range(num_processes):
    args = [
      sys.executable,
      WORKER,
      f'--workdir={workdir}',
      f'--devices={devices}',
      f'--num_processes={num_processes}',
      f'--process_id={i}',
      f'--coordinator_address={address}',
    ]
    args += [f'--{k}' if v is True else f'--{k}={v}' for k, v in flags.items()]
    log = open(os.path.join(str(workdir) + f'.log{i}'), 'w')
    procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env))
  return procs


def wait(procs, workdir, limit=TIME_LIMIT):
  """Exit codes of `procs` (killing them all past `limit` seconds)."""
  deadline = time.time() + limit
  codes = []
  for p in procs:
    try:
      codes.append(p.wait(timeout=max(1, deadline - time.time())))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f'processes still running after {limit}s:\n{logs(workdir, len(procs))}')
  return codes


def logs(workdir, n):
  return '\n'.join(
    f'--- process {i}:\n' + open(f'{workdir}.log{i}').read()[-3000:] for i in range(n)
  )


def run(workdir, num_processes=2, devices=2, **flags):
  procs = launch(workdir, num_processes, devices, **flags)
  codes = wait(procs, workdir)
  assert codes == [0] * num_processes, logs(workdir, num_processes)
  return [open(f'{workdir}.log{i}').read() for i in range(num_processes)]


def final_state(workdir, step=None):
  """The saved train state (host numpy) of `step` (default the latest)."""
  config = config_lib.cifar10('cifar_resnet20')
  model = experiment.model_from_config(config)
  with checkpointing.manager(workdir, create=False) as mngr:
    step = mngr.latest_step() if step is None else step
    abstract = jax.eval_shape(lambda: models.abstract_variables(model))
    abstract['step'] = jax.ShapeDtypeStruct((), np.int32)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract
    )
    state = trained_workdir.restore_inference(mngr, step, abstract)
  return jax.device_get(state)


def assert_same_state(a, b, exact):
  assert int(a['step']) == int(b['step'])
  for x, y in zip(
    jax.tree.leaves((a['params'], a['batch_stats'])),
    jax.tree.leaves((b['params'], b['batch_stats'])),
  ):
    if exact:
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@functools.cache
def _reference_runs(root):
  """1 process x 4 devices and 2 processes x 2 devices, 6 steps each."""
  single, multi = os.path.join(root, 'single'), os.path.join(root, 'multi')
  run(single, num_processes=1, devices=4, result=single + '.eval')
  run(multi, num_processes=2, devices=2, result=multi + '.eval')
  return single, multi


@pytest.fixture(scope='module')
def reference_runs(tmp_path_factory):
  return _reference_runs(str(tmp_path_factory.mktemp('reference')))


def test_two_processes_train_and_evaluate_like_one(reference_runs):
  single, multi = reference_runs
  # Same global batches in the same order (data.core.ProcessBlocks), same devices:
  # only the gradient all-reduce differs (gloo across processes vs in-process),
  # which may round differently; bounded at float32 resolution.
  assert_same_state(final_state(single), final_state(multi), exact=False)
  one = json.load(open(single + '.eval.0'))
  two = [json.load(open(f'{multi}.eval.{i}')) for i in range(2)]
  assert one['count'] == two[0]['count'] == two[1]['count'] == 37  # Each example once.
  assert two[0] == two[1]  # Both processes computed the same metrics.
  assert two[0]['top1_error'] == pytest.approx(one['top1_error'], abs=1 / 37 + 1e-9)
  # Each process saved its own data position (Grain's handler); only process 0
  # wrote the logs and JSON files.
  data_dir = os.path.join(multi, 'checkpoints', '6', 'data')
  assert sorted(f for f in os.listdir(data_dir) if f.endswith('.json')) == [
    'process_0-of-2.json',
    'process_1-of-2.json',
  ]
  assert json.load(open(os.path.join(multi, 'eval.json')))['protocols']['center']['count'] == 37
  assert os.path.exists(os.path.join(multi, 'config.json'))
  log0, log1 = open(multi + '.log0').read(), open(multi + '.log1').read()
  assert 'step 6/6' in log0 and 'step 6/6' not in log1


def test_two_processes_with_k_steps_per_call_and_the_split_on_the_devices(reference_runs, tmp_path):
  # Each process puts the whole split on its 2 devices and sends only indices;
  # 3 calls of 2 steps must train like 6 single steps of 1 process x 4 devices.
  single, _ = reference_runs
  workdir = str(tmp_path / 'k2')
  run(workdir, num_processes=2, devices=2, steps_per_dispatch=2, device_resident=True)
  a, b = final_state(single), final_state(workdir)
  assert int(a['step']) == int(b['step']) == 6
  for x, y in zip(
    jax.tree.leaves((a['params'], a['batch_stats'])),
    jax.tree.leaves((b['params'], b['batch_stats'])),
  ):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5)  # Scan: float32 rounding.


def test_sigterm_to_one_process_saves_the_same_step_everywhere(reference_runs, tmp_path):
  _, multi = reference_runs
  workdir = str(tmp_path / 'preempted')
  # SIGTERM to process 1 after its step 2 (checkpoints every 3 steps otherwise).
  outputs = run(workdir, fault='sigterm', fault_step=2, fault_process=1, checkpoint_every_steps=100)
  with checkpointing.manager(workdir, create=False) as mngr:
    steps = mngr.all_steps()
  # The stop's step, and the evaluation's at step 3 (saved before it) if it came first.
  stop = max(steps)
  assert 2 <= stop <= 4 and set(steps) <= {3, stop}, (steps, outputs[0])
  assert 'Stopped on' in outputs[0]
  # Both processes saved their data position at that step.
  data_dir = os.path.join(workdir, 'checkpoints', str(stop), 'data')
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(data_dir))
  # Resuming finishes the run with the uninterrupted run's parameters.
  outputs = run(workdir, checkpoint_every_steps=100)
  assert f'Resumed from step {stop}' in outputs[0]
  assert_same_state(final_state(workdir), final_state(multi), exact=True)


def test_killed_process_makes_the_other_fail_fast(tmp_path):
  workdir = str(tmp_path / 'killed')
  procs = launch(
    workdir,
    total_steps=400,
    checkpoint_every_steps=2,
    fault='sigkill',
    fault_step=5,
    fault_process=1,
    heartbeat_timeout=5,
  )
  codes = wait(procs, workdir, limit=180)
  ended = time.time()
  assert codes[1] == -9
  assert codes[0] != 0, logs(workdir, 2)
  # The survivor noticed within the heartbeat timeout (5 s) and some margin.
  waited = ended - float(open(workdir + '.fault_time').read())
  assert waited < 60, (waited, logs(workdir, 2))
  # The last committed checkpoint is still whole and restores.
  with checkpointing.manager(workdir, create=False) as mngr:
    last = mngr.latest_step()
  assert last is not None and last >= 2
  state = final_state(workdir, last)
  assert int(state['step']) == last
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state['params']))
