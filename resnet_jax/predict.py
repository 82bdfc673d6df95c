r"""The prediction command line: classifies image files with a trained workdir's
latest checkpoint (the library is `resnet_jax.prediction`).

    python -m resnet_jax.predict --workdir=DIR FILE_OR_FOLDER... [--top_k=5] \
        [--output=preds.json|preds.csv] [--batch_size=64]

Folders are searched recursively for .jpg, .jpeg and .png files (any case)
by the folder dataset's rule (hidden files and folders, such as macOS's `._*`
files, left out) and taken in sorted order; files named on the command line
are read whatever their suffix. Each image gets the evaluation's center view
(ImageNet family: shorter side `eval.resize_size`, central `eval.crop_size`
crop; CIFAR family: the training size) and one printed line, its classes most
probable first:

    photos/cat.jpg: tabby (0.934), tiger_cat (0.021), ...

`--output` also writes the predictions: `.json` a list of {'file', 'top_k':
[{'label', 'name', 'probability'}]}, `.csv` the columns file, rank, label,
name, probability (rank 1 is the top class). Bad input (no image files, an
unknown output suffix or a missing output folder, a workdir without
checkpoints, an unreadable image) prints one `error:` line and exits 1; the
output is checked before any image is read. The library:
`resnet_jax.prediction`.
"""

import csv
import json
import os

from absl import flags, logging

from resnet_jax import cli, errors

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The trained (or imported) workdir to predict with.')
flags.DEFINE_integer('top_k', 5, 'Classes per image, most probable first.')
flags.DEFINE_bool(
  'ema', False, "The weights' moving average (of a run trained with config.ema), not the raw ones."
)
flags.DEFINE_string(
  'output', None, 'Also write the predictions to this .json or .csv file (by its suffix).'
)
flags.DEFINE_integer(
  'batch_size', 64, 'Images per compiled call (rounded up to a multiple of the devices).'
)

OUTPUT_SUFFIXES = ('.json', '.csv')


def image_files(paths) -> list[str]:
  """The image files named by `paths`: files as given, folders expanded.

  Args:
    paths: files and folders.

  Returns:
    Files in the order given; a folder's image files sorted, chosen by the
    folder dataset's rule (`data.folder.find_images`: .jpg/.jpeg/.png in any
    case, found recursively, hidden files and folders such as macOS's `._*`
    left out).

  Raises:
    MissingError: a path that does not exist, or no image file in all.
    DataError: a path (or an image-named file in a folder) that is no regular file.
  """
  files = []
  for path in paths:
    if os.path.isdir(path):
      from resnet_jax.data import folder  # Only folders need it (and it imports JAX).

      files.extend(sorted(os.path.join(path, f) for f in folder.find_images(path)))
    elif os.path.isfile(path):
      files.append(path)
    elif os.path.exists(path):  # A FIFO would block the read for ever.
      raise errors.DataError(f'{path} is not a regular file: name an image file')
    else:
      raise errors.MissingError(f'{path}: no such file or folder')
  if not files:
    raise errors.MissingError(
      f'no image files (.jpg, .jpeg, .png) in {", ".join(paths) or "the arguments"}; '
      'name image files or folders that hold some'
    )
  return files


def format_line(result: dict) -> str:
  """`file: name (0.934), name (0.021), ...` of one `classify` result."""
  classes = ', '.join(f'{c["name"]} ({c["probability"]:.3f})' for c in result['top_k'])
  return f'{result["file"]}: {classes}'


def check_output(path: str | None):
  """A UserError unless `path` (if any) is a .json or .csv file that can be
  written: checked before any image is scored, and without creating it."""
  if not path:
    return
  if not path.lower().endswith(OUTPUT_SUFFIXES):
    raise errors.ConfigError(
      f'--output={path}: unknown format; name a {" or ".join(OUTPUT_SUFFIXES)} file'
    )
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise errors.MissingError(
      f'--output={path}: the folder {directory} does not exist; create it or write elsewhere'
    )
  if os.path.isdir(path):
    raise errors.ConfigError(f'--output={path} is a folder; name a file in it')
  if not os.access(directory, os.W_OK):
    raise errors.ConfigError(
      f'--output={path}: the folder {directory} is not writable; write elsewhere'
    )


def write_output(path: str, results: list[dict]):
  """Writes `classify` results as JSON or CSV, by `path`'s suffix."""
  if path.lower().endswith('.json'):
    with open(path, 'w') as f:
      json.dump(results, f, indent=2)
      f.write('\n')
    return
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['file', 'rank', 'label', 'name', 'probability'])
    for result in results:
      for rank, c in enumerate(result['top_k'], 1):
        writer.writerow([result['file'], rank, c['label'], c['name'], c['probability']])


def main(argv):
  if not FLAGS.workdir:
    cli.fail('--workdir is required: the trained workdir to predict with.')
  if FLAGS.top_k < 1:
    cli.fail(f'--top_k={FLAGS.top_k}; ask for at least one class.')
  check_output(FLAGS.output)
  files = image_files(argv[1:])
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  from resnet_jax import prediction  # JAX only once the arguments are good.

  predictor = prediction.Predictor.from_workdir(
    FLAGS.workdir, batch_size=FLAGS.batch_size, ema=FLAGS.ema
  )
  results = []
  # A batch at a time: lines appear as the images are scored.
  for start in range(0, len(files), predictor.batch_size):
    for result in predictor.classify(files[start : start + predictor.batch_size], FLAGS.top_k):
      print(format_line(result), flush=True)
      results.append(result)
  if FLAGS.output:
    write_output(FLAGS.output, results)


if __name__ == '__main__':
  cli.run(main)
