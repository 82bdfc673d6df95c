"""Trains or evaluates one experiment of the paper, on one host or many.

    python -m resnet_jax.main --config=configs/cifar10_resnet20.py --workdir=DIR
    python -m resnet_jax.main --config=configs/imagenet_r152.py --workdir=DIR \
        --mode=evaluate --config.eval.protocol=ten_crop
    python -m resnet_jax.main --mode=evaluate --workdir=DIR \
        --config.input.dataset=imagenette224 --config.input.data_dir=TFDS_DIR

Without `--config`, `--mode=evaluate` reads the workdir's saved config (its
overrides apply to that); its dataset may be another with the same classes.
Override any config field with `--config.a.b=value`. On several hosts every
process runs the same command; the distributed runtime starts from JAX's own
flags (`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`) or
from the cluster JAX detects (TPU pod, SLURM, Open MPI). Bad input (config,
data, checkpoint, workdir) prints one line saying what to fix and exits 1;
`--print_config` prints the resolved config and exits, `--print_summary` the
model's table of stages and blocks and its parameter count. A run prints its
environment first (JAX, devices, versions, git revision) and records it in
WORKDIR/env.json, and copies what it prints into WORKDIR/log.txt.
All logic lives in `resnet_jax.training.loop`, `resnet_jax.evaluation` and
`resnet_jax.run_record`.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import cli, distributed, run_record

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string(
  'workdir',
  None,
  'Directory for checkpoints, metrics and the config (local, or gs://... or any etils.epath path).',
)
flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'evaluate'],
  'train (resuming from workdir if possible), or evaluate the '
  "workdir's latest checkpoint with --config.eval.protocol "
  '(center, ten_crop, multi_scale, ensemble).',
)
flags.DEFINE_string(
  'coordinator_address',
  None,
  'HOST:PORT of process 0, for a multi-process run (with '
  '--num_processes and --process_id); unset: JAX detects the '
  'cluster, or one process.',
)
flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
flags.DEFINE_integer('process_id', None, "This process's index, 0..num_processes-1.")
flags.DEFINE_bool(
  'detect_cluster',
  True,
  'Without --coordinator_address, let JAX detect a TPU pod, SLURM job or Open MPI launch.',
)
flags.DEFINE_bool(
  'print_config',
  False,
  'Print the resolved config (the file and its --config.* overrides) and exit without training.',
)
flags.DEFINE_bool(
  'print_summary',
  False,
  "Print the config's model (its stages and blocks on one training image) and its parameter "
  'count, and exit without training.',
)
# Without --config, evaluate reads the workdir's own config through this config file.
SAVED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config_from_workdir.py')


def argv_with_saved_config(argv: list[str]) -> list[str]:
  """`argv`, with `--config=<config_from_workdir.py>:WORKDIR` added when it asks to
  evaluate a workdir and names no config file."""
  if cli.flag_values(argv, 'config') or 'evaluate' not in cli.flag_values(argv, 'mode'):
    return argv
  workdirs = cli.flag_values(argv, 'workdir')
  return [argv[0], f'--config={SAVED_CONFIG}:{workdirs[-1]}', *argv[1:]] if workdirs else argv


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.config is None:
    cli.fail(
      '--config is required: an experiment config file such as configs/cifar10_resnet20.py '
      "(--mode=evaluate --workdir=DIR alone reads the workdir's saved config)"
    )
  if FLAGS.print_config:
    print(FLAGS.config)
    return
  if FLAGS.print_summary:
    from resnet_jax import experiment

    logging.set_verbosity(logging.WARNING)  # Not JAX's backend search.
    print(experiment.model_summary(FLAGS.config))
    return
  if not FLAGS.workdir:
    cli.fail('--workdir is required: the directory for checkpoints, metrics and the config.')
  logging.set_verbosity(logging.WARNING)
  distributed.initialize(
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
    auto_detect=FLAGS.detect_cluster,
  )
  from resnet_jax import evaluation  # After the runtime is up.
  from resnet_jax.training import loop

  # The workdir's env.json and log.txt come at the run's first printed line:
  # bad input, reported before it, leaves the workdir as it was.
  with run_record.logged_run(FLAGS.workdir):
    if FLAGS.mode == 'train':
      loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      evaluation.evaluate_workdir(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main, argv=argv_with_saved_config(sys.argv))
