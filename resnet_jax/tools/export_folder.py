r"""Writes examples of a TFDS image dataset as a folder of images
(`OUT/train/<class>/*.jpg`, `OUT/val/<class>/*.jpg`), the layout that
`--config.input.dataset=folder --config.input.data_dir=OUT` trains on.

    python -m resnet_jax.tools.export_folder --dataset=cifar10_jpeg \
        --data_dir=DIR --out=runs/cifar5_folder \
        --classes=airplane,automobile,bird,cat,deer --train_per_class=100 --val_per_class=20

DIR is a TFDS data directory that holds the dataset. The encoded bytes are
written unchanged (no re-encoding): JPEGs stay the dataset's JPEGs, other
encodings keep their format's suffix. Examples are taken in the split's
stored order, the first N of each class.
"""

import os

import ml_collections
from absl import flags, logging

from resnet_jax import cli, errors

FLAGS = flags.FLAGS
flags.DEFINE_string('dataset', None, 'TFDS dataset, e.g. cifar10_jpeg, imagenette224.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (None: TFDS default).')
flags.DEFINE_string('out', None, 'The folder to write (must not exist yet).')
flags.DEFINE_list('classes', None, 'Class names to export (default: all).')
flags.DEFINE_integer('train_per_class', 100, 'Training images per class.')
flags.DEFINE_integer('val_per_class', 20, 'Validation images per class.')
flags.DEFINE_string('train_split', 'train', 'The split train/ is taken from.')
flags.DEFINE_string(
  'val_split', None, "The split val/ is taken from (default: the dataset's evaluation split)."
)


def _suffix(data: bytes) -> str:
  if data[:3] == b'\xff\xd8\xff':
    return '.jpg'
  if data[:8] == b'\x89PNG\r\n\x1a\n':
    return '.png'
  raise errors.DataError('an example is neither JPEG nor PNG; export a dataset of encoded images')


def export(dataset, data_dir, out, classes, per_split: dict) -> dict:
  """Writes `per_split` ({split: (tfds split, images per class)}) of
  `classes` under `out`; returns {split: images written}."""
  import tensorflow_datasets as tfds  # Heavy import; only where data is read.

  from resnet_jax.data import catalog

  info = tfds.builder(dataset, data_dir=catalog.tfds_root(data_dir)).info
  names = list(info.features['label'].names)
  wanted = classes or names
  unknown = [c for c in wanted if c not in names]
  if unknown:
    raise errors.ConfigError(f'{dataset} has no class {unknown[0]!r}; its classes: {names}')
  if os.path.exists(out):
    raise errors.WorkdirError(f'{out} already exists; choose a new --out')
  written = {}
  for split, (spec, count) in per_split.items():
    source = tfds.data_source(
      dataset,
      split=spec,
      data_dir=catalog.tfds_root(data_dir),
      decoders={'image': tfds.decode.SkipDecoding()},
    )
    left = {names.index(c): count for c in wanted}
    for i in range(len(source)):
      if not any(left.values()):
        break
      example = source[i]
      label = int(example['label'])
      if not left.get(label):
        continue
      left[label] -= 1
      data = example['image']
      directory = os.path.join(out, split, names[label])
      os.makedirs(directory, exist_ok=True)
      with open(os.path.join(directory, f'{i:06d}{_suffix(data)}'), 'wb') as f:
        f.write(data)
    short = {names[k]: v for k, v in left.items() if v}
    if short:
      raise errors.DataError(f'{dataset}:{spec} holds too few images of {short} (missing counts)')
    written[split] = count * len(wanted)
  return written


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Not TFDS's per-read info lines.
  if not FLAGS.dataset or not FLAGS.out:
    cli.fail('--dataset and --out are required')
  from resnet_jax.data import catalog

  val_split = FLAGS.val_split
  if val_split is None:
    inp = ml_collections.ConfigDict({'dataset': FLAGS.dataset, 'data_dir': FLAGS.data_dir})
    val_split = catalog.dataset_info(inp).eval_split
  written = export(
    FLAGS.dataset,
    FLAGS.data_dir,
    FLAGS.out,
    FLAGS.classes,
    {
      'train': (FLAGS.train_split, FLAGS.train_per_class),
      'val': (val_split, FLAGS.val_per_class),
    },
  )
  print(f'wrote {written["train"]} training and {written["val"]} validation images to {FLAGS.out}')


if __name__ == '__main__':
  cli.run(main)
