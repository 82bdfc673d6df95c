"""One process of a multi-process test run (launched by test_multiprocess.py).

Trains the tiny CIFAR problem of helpers.py into --workdir on
--devices CPU devices, as process --process_id of --num_processes (JAX's
distributed runtime over gloo), then scores the workdir with the evaluation
protocol and writes its result to --result. Faults are injected at a given
step of process --fault_process: SIGTERM (preemption) or SIGKILL (host loss).
"""

import argparse
import json
import os
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument('--workdir', required=True)
parser.add_argument('--devices', type=int, default=2)
parser.add_argument('--coordinator_address')
parser.add_argument('--num_processes', type=int, default=1)
parser.add_argument('--process_id', type=int, default=0)
parser.add_argument('--total_steps', type=int, default=6)
parser.add_argument('--checkpoint_every_steps', type=int, default=3)
parser.add_argument('--fault', choices=['none', 'sigterm', 'sigkill'], default='none')
parser.add_argument('--fault_step', type=int, default=0)
parser.add_argument('--fault_process', type=int, default=1)
parser.add_argument('--heartbeat_timeout', type=int, default=10)
parser.add_argument('--steps_per_dispatch', type=int, default=1)
parser.add_argument('--device_resident', action='store_true')
parser.add_argument('--result')
args = parser.parse_args()

# Before JAX starts: this process's CPU devices (the other flags and the
# compile cache come from the tests' environment).
xla_flags = [
  f
  for f in os.environ.get('XLA_FLAGS', '').split()
  if not f.startswith('--xla_force_host_platform_device_count')
]
os.environ['XLA_FLAGS'] = ' '.join(
  [*xla_flags, f'--xla_force_host_platform_device_count={args.devices}']
)
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

import jax  # noqa: E402

from resnet_jax import distributed  # noqa: E402

if args.num_processes > 1:
  distributed.initialize(
    args.coordinator_address,
    args.num_processes,
    args.process_id,
    heartbeat_timeout=args.heartbeat_timeout,
    initialization_timeout=60,
    # A clean stop waits for the slower process at the shutdown barrier (on a
    # loaded 2-core machine that took over 30 s once); with a killed peer,
    # the survivor would wait out the whole timeout there.
    shutdown_timeout=30 if args.fault == 'sigkill' else 120,
  )

from resnet_jax import evaluation  # noqa: E402
from resnet_jax.training import loop  # noqa: E402
from resnet_jax.training import step as step_lib  # noqa: E402

from helpers import tiny_config, tiny_splits  # noqa: E402


def worker_config():
  """helpers.tiny_config with this process's steps, K and checkpoint interval."""
  config = tiny_config(
    total_steps=args.total_steps, boundaries=(3, 5) if args.total_steps > 5 else ()
  )
  config.checkpoint_every_steps = args.checkpoint_every_steps
  config.steps_per_dispatch = args.steps_per_dispatch
  config.input.device_resident = args.device_resident
  if args.steps_per_dispatch > 1:  # Evaluate and save only at the end.
    config.eval_every_steps = config.checkpoint_every_steps = args.total_steps
  return config


def inject_fault():
  """Wraps the compiled step so that the fault hits at `--fault_step`."""
  if args.fault == 'none' or jax.process_index() != args.fault_process:
    return
  original = step_lib.Trainer.compile_train
  signum = signal.SIGTERM if args.fault == 'sigterm' else signal.SIGKILL

  def compile_train(self, batch_size, resident=None):
    compiled, calls = original(self, batch_size, resident), [0]

    class Step:
      def __call__(self, *a):
        calls[0] += 1
        out = compiled(*a)
        if calls[0] == args.fault_step:
          jax.block_until_ready(out)
          with open(f'{args.workdir}.fault_time', 'w') as f:
            f.write(repr(time.time()))
          os.kill(os.getpid(), signum)
        return out

      def memory_analysis(self):
        return compiled.memory_analysis()

    return Step()

  step_lib.Trainer.compile_train = compile_train


data = tiny_splits()
inject_fault()
loop.train_and_evaluate(worker_config(), args.workdir, data=data)
if args.result:
  result = evaluation.evaluate_workdir(worker_config(), args.workdir, data=data)
  with open(f'{args.result}.{jax.process_index()}', 'w') as f:
    json.dump(result, f)
print(f'process {jax.process_index()} finished', flush=True)
