"""A child process for the fault tests: training with a fault injected, or
many command lines forked from one interpreter.

    python tests/fault_worker.py train WORKDIR [--kill_at_save=N]
        [--kill_in_final_eval] [--fail_save=N] [--step_seconds=S --total_steps=N]
        [--fail_eval=N] [--fail_write=tensorboard:N|eval.json]
        [--block_at_step=N] [--stop_grace=S]
    python tests/fault_worker.py evaluate WORKDIR
    python tests/fault_worker.py cli CASES.json RESULTS.json

`train`/`evaluate` run the tests' tiny problem (`helpers.fault_config`)
through `cli.run`, as the command lines do. The faults: SIGKILL of
this process while checkpoint N is being written, or as the final evaluation
starts; a write error (no space left) in the save of checkpoint N; steps
slowed to S seconds each (for signals sent during a step); the evaluation
at step N failing (an unreadable test image); a write error (no space left)
in TensorBoard's file at step N or in eval.json; the input blocking for good
as step N asks for its batch (it prints 'blocked' first), with the stop
request's grace time cut to S seconds.

`cli` runs each case of CASES.json ({'module', 'argv'}) in a child forked from
this interpreter, which has imported the project's libraries but not started
JAX's backends: each case costs a flag parse, not a Python start. (The child
runs the command-line module as `__main__`, as `python -m` does.)
RESULTS.json gets {'code', 'stdout', 'stderr'} per case.
"""

import argparse
import errno
import json
import os
import runpy
import signal
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import conftest  # noqa: E402,F401 - the test processes' XLA flags and compile cache.


def _inject(args):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler

  from resnet_jax import evaluation

  handler = json_checkpoint_handler.JsonCheckpointHandler
  original_save = handler._save_fn

  async def save_fn(self, item, directory):
    step = item.get('step') if isinstance(item, dict) else None
    if step is not None and step == args.kill_at_save:
      os.kill(os.getpid(), signal.SIGKILL)  # The state item is being written too.
    if step is not None and step == args.fail_save:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await original_save(self, item, directory)

  handler._save_fn = save_fn
  if args.kill_in_final_eval:
    original_final = evaluation.final_protocols

    def final_protocols(*a, **k):
      os.kill(os.getpid(), signal.SIGKILL)
      return original_final(*a, **k)

    evaluation.final_protocols = final_protocols
  _inject_eval_failure(args.fail_eval)
  _inject_write_failure(args.fail_write)
  _inject_blocked_input(args.block_at_step)
  if args.stop_grace is not None:
    from resnet_jax import distributed

    distributed.STOP_GRACE_S = args.stop_grace


def _no_space(path):
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _inject_eval_failure(at_step):
  from resnet_jax import errors
  from resnet_jax.training import loop

  original = loop._Run._evaluate

  def evaluate(self, steering):
    if self.step == at_step:
      raise errors.DataError(f'an unreadable test image (injected at step {self.step})')
    return original(self, steering)

  loop._Run._evaluate = evaluate


def _inject_write_failure(spec):
  from etils import epath

  from resnet_jax.training import metric_writers

  if spec and spec.startswith('tensorboard:'):
    at_step, original = int(spec.split(':')[1]), metric_writers._EventFile.write

    def write(self, step, scalars):
      if step == at_step:
        raise _no_space(self._events._file_name)
      return original(self, step, scalars)

    metric_writers._EventFile.write = write
  elif spec == 'eval.json':
    path_type = type(epath.Path('.'))
    original = path_type.write_text

    def write_text(self, *a, **k):
      if self.name == 'eval.json.tmp':
        raise _no_space(self)
      return original(self, *a, **k)

    path_type.write_text = write_text


def _inject_blocked_input(at_step):
  import threading

  from resnet_jax.training import loop

  original = loop._Run._open_batches

  class Blocking:
    """The run's batches, until the one for step `at_step`: that never comes."""

    def __init__(self, batches):
      self.batches, self.taken = batches, 0

    def __next__(self):
      self.taken += 1
      if self.taken == at_step:
        print('blocked', flush=True)
        threading.Event().wait()
      return next(self.batches)

    def __getattr__(self, name):
      return getattr(self.batches, name)

  def open_batches(self):
    return Blocking(original(self)) if at_step else original(self)

  loop._Run._open_batches = open_batches


def _slow_steps(seconds: float):
  import time

  from resnet_jax.training import step

  original = step.Trainer.compile_train

  def compile_train(self, *args):
    compiled = original(self, *args)

    class Slow:
      def __call__(self, *a):
        time.sleep(seconds)
        return compiled(*a)

      def memory_analysis(self):
        return compiled.memory_analysis()

    return Slow()

  step.Trainer.compile_train = compile_train


def train_or_evaluate(args):
  from absl import logging

  from resnet_jax import cli, evaluation
  from resnet_jax.training import loop

  from helpers import fault_config, tiny_splits

  _inject(args)
  config = fault_config()
  if args.step_seconds:
    _slow_steps(args.step_seconds)
  if args.total_steps:
    config.schedule.total_steps = args.total_steps

  def work(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # As `main` sets it.
    if args.mode == 'train':
      loop.train_and_evaluate(config, args.workdir, data=tiny_splits())
    else:
      evaluation.evaluate_workdir(config, args.workdir, data=tiny_splits())

  cli.run(work, argv=['fault_worker'])  # As the command lines run their work.


def run_cli_cases(cases_file, results_file):
  cases = json.load(open(cases_file))
  import tensorflow_datasets  # noqa: F401 - imported once, for every child.

  from resnet_jax import evaluation  # noqa: F401
  from resnet_jax.training import loop  # noqa: F401

  results = []
  for case in cases:
    out, err = tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')
    pid = os.fork()
    if pid == 0:  # The child: run one command line, then exit without cleanup.
      code = 0
      os.dup2(out.fileno(), 1)
      os.dup2(err.fileno(), 2)
      try:
        sys.argv = [case['module'], *case['argv']]
        # This interpreter imported the modules once for all children; runpy
        # warns that the one it runs is among them (a fresh process has none).
        warnings.filterwarnings('ignore', '.*found in sys.modules', RuntimeWarning)
        runpy.run_module(case['module'], run_name='__main__', alter_sys=True)
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except BaseException:  # noqa: BLE001 - a traceback: reported as such.
        import traceback

        traceback.print_exc()
        code = 99
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    err.seek(0)
    code = os.waitstatus_to_exitcode(status)
    results.append({'code': code, 'stdout': out.read(), 'stderr': err.read()})
  json.dump(results, open(results_file, 'w'))


def main():
  if sys.argv[1] == 'cli':
    return run_cli_cases(sys.argv[2], sys.argv[3])
  parser = argparse.ArgumentParser()
  parser.add_argument('mode', choices=['train', 'evaluate'])
  parser.add_argument('workdir')
  parser.add_argument('--kill_at_save', type=int)
  parser.add_argument('--fail_save', type=int)
  parser.add_argument('--kill_in_final_eval', action='store_true')
  parser.add_argument('--step_seconds', type=float)
  parser.add_argument('--total_steps', type=int)
  parser.add_argument('--fail_eval', type=int)
  parser.add_argument('--fail_write')
  parser.add_argument('--block_at_step', type=int)
  parser.add_argument('--stop_grace', type=float)
  train_or_evaluate(parser.parse_args())


if __name__ == '__main__':
  main()
