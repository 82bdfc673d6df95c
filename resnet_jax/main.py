"""Trains or evaluates one experiment of the paper.

    python -m resnet_jax.main --config=configs/cifar10_resnet20.py --workdir=DIR
    python -m resnet_jax.main --config=configs/imagenet_r152.py --workdir=DIR \
        --mode=evaluate --config.eval.protocol=ten_crop

Override any config field with `--config.a.b=value`. All logic lives in
`resnet_jax.train` and `resnet_jax.evaluation`; this file only parses flags.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import evaluation, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the config.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'],
                  'train (resuming from workdir if possible), or evaluate the '
                  "workdir's latest checkpoint with --config.eval.protocol "
                  '(center, ten_crop, multi_scale, ensemble).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if FLAGS.mode == 'train':
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    evaluation.evaluate_workdir(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
