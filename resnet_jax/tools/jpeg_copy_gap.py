r"""What a JPEG copy of CIFAR-10 costs a trained net: its error on official
CIFAR-10 test images beside its error on their JPEG copies.

    python -m resnet_jax.tools.jpeg_copy_gap --workdir=runs/r20 \
        --test_batch=cifar-10-batches-py/test_batch --data_dir=DIR --out=gap.json

`--test_batch` is the official release's Python test batch, whole or cut
short (`cifar_release` reads it). Each official image is paired with its
copy in `--dataset`'s test split (the nearest JPEG image of its class);
both are scored with the workdir's center view. The pairing distance (mean
absolute pixel difference, in 1/255) says how far the copy is from the
official pixels.
"""

import json

import numpy as np
from absl import flags, logging

from resnet_jax import cli
from resnet_jax.tools import cifar_release

FLAGS = flags.FLAGS
# Defined only when this module runs as the command line: imported as a
# library (by tests), it leaves --workdir and the others to the program
# that imports it.
if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A trained CIFAR workdir (its latest checkpoint).')
  flags.DEFINE_string('test_batch', None, "The official CIFAR-10 Python release's test_batch file.")
  flags.DEFINE_string('dataset', 'cifar10_jpeg', 'The TFDS JPEG copy of CIFAR-10.')
  flags.DEFINE_string('data_dir', None, 'TFDS data directory (None: TFDS default).')
  flags.DEFINE_string('out', None, 'Also write the figures to this JSON file.')
  flags.DEFINE_bool('ema', False, "Score the weights' moving average (runs with config.ema).")


def gap(predictor, images, copies, labels) -> dict:
  """Errors (%) on the official images and on their copies, and how the
  per-image outcomes differ."""
  right = predictor.predict(images).argmax(1) == labels
  right_copy = predictor.predict(copies).argmax(1) == labels
  return {
    'images': int(len(labels)),
    'error_official': round(100 * float(1 - right.mean()), 2),
    'error_jpeg_copy': round(100 * float(1 - right_copy.mean()), 2),
    'right_on_official_only': int((right & ~right_copy).sum()),
    'right_on_copy_only': int((~right & right_copy).sum()),
  }


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir or not FLAGS.test_batch:
    cli.fail('--workdir and --test_batch are required')
  images, labels = cifar_release.read_batch(FLAGS.test_batch)
  copies, copy_labels = cifar_release.load_copies(FLAGS.dataset, 'test', FLAGS.data_dir)
  paired, distance = cifar_release.pair_with_copies(images, labels, copies, copy_labels)
  from resnet_jax import prediction

  predictor = prediction.Predictor.from_workdir(FLAGS.workdir, batch_size=500, ema=FLAGS.ema)
  result = {
    'workdir': FLAGS.workdir,
    'step': int(predictor.step),
    **gap(predictor, images, paired, labels),
    'pair_distance_median': round(float(np.median(distance)), 2),
    'pair_distance_max': round(float(distance.max()), 2),
  }
  print(
    f'{result["images"]} official test images: error {result["error_official"]:.2f}% on them, '
    f'{result["error_jpeg_copy"]:.2f}% on their {FLAGS.dataset} copies '
    f'(right on the official only {result["right_on_official_only"]}, on the copy only '
    f'{result["right_on_copy_only"]}; pixel distance median {result["pair_distance_median"]}/255)'
  )
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  cli.run(main)
