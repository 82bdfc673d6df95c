"""Trains or evaluates one experiment of the paper, on one host or many.

    python -m resnet_jax.main --config=configs/cifar10_resnet20.py --workdir=DIR
    python -m resnet_jax.main --config=configs/imagenet_r152.py --workdir=DIR \
        --mode=evaluate --config.eval.protocol=ten_crop

Override any config field with `--config.a.b=value`. On several hosts every
process runs the same command; the distributed runtime starts from JAX's own
flags (`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`) or
from the cluster JAX detects (TPU pod, SLURM, Open MPI). Bad input (config,
data, checkpoint, workdir) prints one line saying what to fix and exits 1;
`--print_config` prints the resolved config and exits.
All logic lives in `resnet_jax.training.loop` and `resnet_jax.evaluation`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import cli, distributed

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
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.print_config:
    print(FLAGS.config)
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

  if FLAGS.mode == 'train':
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    evaluation.evaluate_workdir(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
