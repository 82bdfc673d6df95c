"""Where the train step's time goes: per-op times of the compiled step, grouped.

    python -m resnet_jax.tools.step_profile --config=configs/cifar10_resnet20.py
    python -m resnet_jax.tools.step_profile --config=configs/cifar10_resnet56.py --top=25

Compiles the real train step (as `tools.benchmark` does, on synthetic data),
traces `--steps` calls with `jax.profiler`, and attributes the time of every
executed op (XLA:CPU runs one traced thunk per HLO instruction or fusion) to a
group read off the compiled HLO: convolutions forward and their gradients,
BatchNorm forward and backward, other elementwise work, transposes and copies,
the scan's stacking of per-block values, collectives, the optimizer update and
metrics, the on-device augmentation, and loop/branch control. Prints
milliseconds per train step summed over the devices' threads (CPU time, not
wall time), the share of each group, and the costliest ops. Times are the ops'
own (self) time: a conditional's or a loop's inner ops count in their groups.
"""

import tempfile

import jax
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli
from resnet_jax.tools import hlo_profile, synthetic_step

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
flags.DEFINE_integer('steps', 5, 'Traced train steps.')
flags.DEFINE_integer('top', 15, 'Also list this many of the costliest ops.')
flags.DEFINE_string('trace_dir', None, 'Keep the trace here (default: a temporary directory).')


def main(argv):
  del argv
  config = FLAGS.config
  if config is None:
    cli.fail('--config is required: an experiment config such as configs/cifar10_resnet20.py')
  step_fn, state, batch, resident = synthetic_step.prepare(config)[:4]
  for _ in range(2):
    state, metrics = step_fn(state, batch, resident)
  jax.block_until_ready(metrics)
  trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix='step_profile_')
  with jax.profiler.trace(trace_dir):
    for _ in range(FLAGS.steps):
      state, metrics = step_fn(state, batch, resident)
    jax.block_until_ready(metrics)
  k = config.get('steps_per_dispatch', 1)
  by_group, by_op, instructions = hlo_profile.attribute(
    step_fn.as_text(), hlo_profile.trace_events(trace_dir), FLAGS.steps * k
  )
  print(
    f'{config.model} batch {config.input.batch_size} on {jax.device_count()} '
    f'{jax.devices()[0].platform.upper()} devices; {FLAGS.steps * k} traced steps'
  )
  print(hlo_profile.report(by_group, by_op, instructions, FLAGS.top))


if __name__ == '__main__':
  cli.run(main)
