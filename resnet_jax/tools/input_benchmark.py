"""Host input throughput of the ImageNet pipeline, on real JPEGs.

    python -m resnet_jax.tools.input_benchmark --config=configs/imagenette_r50.py \
        [--decoders] [--num_workers=2]
    python -m resnet_jax.tools.input_benchmark --dataset=imagenette224 \
        --data_dir=DIR [--decoders] [--num_workers=2]

With --config, the dataset, data directory and view sizes come from the
experiment config (and its --config.x.y overrides); otherwise from the flags
(DIR: a TFDS data directory).

Prints decoded-and-augmented images/s per core (one process, one thread,
JPEG bytes already in memory) for a view, the mean JPEG size and decoded
resolution of the measured images, and with --num_workers=N the whole Grain
pipeline's images/s (reading, decoding in N worker processes, batching).
--train_crop and --trivial_augment pick the training view (with --config,
the config's). --decoders adds a table of the candidate decoders.
--reencode_hw re-encodes the images at another size and quality first, to
measure how throughput scales with JPEG size (ImageNet's average ~110 KB,
~10x imagenette224's).
"""

import json
import time

import cv2
import numpy as np
import simplejpeg
from absl import app, flags
from ml_collections import config_flags

from resnet_jax import cli, config_lib
from resnet_jax.data import imagenet, imagenet_views, trivial_augment

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Experiment config: dataset and view sizes.', lock_config=False
)
flags.DEFINE_string('dataset', 'imagenette224', 'TFDS dataset name.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_string('split', 'train', 'Split to read.')
flags.DEFINE_integer('images', 1000, 'Images to measure.')
flags.DEFINE_enum('view', 'train', ['train', 'center', 'ten_crop'], 'View.')
flags.DEFINE_integer('crop_size', 224, 'Crop side.')
flags.DEFINE_integer('scale_min', 256, 'Training view: smallest shorter side.')
flags.DEFINE_integer('scale_max', 480, 'Training view: largest shorter side.')
flags.DEFINE_integer('resize_size', 256, 'Test views: shorter side.')
flags.DEFINE_enum(
  'train_crop', 'scale', list(imagenet.TRAIN_CROPS), "Training view: the paper's or Inception's."
)
flags.DEFINE_bool('trivial_augment', False, 'Training view: TrivialAugment on each crop too.')
flags.DEFINE_integer(
  'num_workers', 0, 'If > 0, also time the whole pipeline with this many Grain worker processes.'
)
flags.DEFINE_integer('batch_size', 128, 'Pipeline batch size.')
flags.DEFINE_integer('batches', 40, 'Pipeline batches timed (after 3 warm-up).')
flags.DEFINE_bool('decoders', False, 'Also print the decoder comparison.')
flags.DEFINE_list(
  'reencode_hw', [], 'H,W: resize every image to H x W and re-encode it (4:2:0) before measuring.'
)
flags.DEFINE_integer('reencode_quality', 90, 'JPEG quality of --reencode_hw.')
flags.DEFINE_string('json', None, 'Append the results to this file (JSON lines).')


def rate(fn, items, min_seconds=2.0, rounds=5):
  """Items per second of fn over items: the median of `rounds` timed rounds.

  Each round repeats fn over all items for at least min_seconds / rounds;
  the median damps interference from other work on the machine.
  """
  for item in items[:10]:  # Warm up caches and lazy initialisation.
    fn(item)
  rates = []
  for _ in range(rounds):
    done, start = 0, time.perf_counter()
    while True:
      for item in items:
        fn(item)
      done += len(items)
      elapsed = time.perf_counter() - start
      if elapsed >= min_seconds / rounds:
        rates.append(done / elapsed)
        break
  return float(np.median(rates))


def reencode(jpeg: bytes, hw: tuple[int, int], quality: int) -> bytes:
  """The image resized (bicubic) to hw and JPEG-encoded again, 4:2:0."""
  image = imagenet_views.decode(jpeg)
  image = cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
  return simplejpeg.encode_jpeg(
    np.ascontiguousarray(image), quality=quality, colorspace='RGB', colorsubsampling='420'
  )


def view_fn(view: str):
  """The per-image work of `view`, from JPEG bytes to the uint8 view(s)."""
  crop, scales = FLAGS.crop_size, (FLAGS.scale_min, FLAGS.scale_max)
  rng = np.random.default_rng(0)
  if view == 'train':
    crop_view = imagenet.train_view_fn(FLAGS.train_crop, crop, scales)
    if not FLAGS.trivial_augment:
      return lambda jpeg: crop_view(jpeg, rng)
    return lambda jpeg: trivial_augment.trivial_augment(crop_view(jpeg, rng), rng)
  size = FLAGS.resize_size
  views = {'center': imagenet_views.center_view, 'ten_crop': imagenet_views.ten_crop_views}[view]
  return lambda jpeg: views(imagenet_views.decode(jpeg, size), size, crop)


def decoder_table(jpegs: list[bytes]) -> list[dict]:
  """Per-core images/s of each decoder: full, 1/2 DCT scale, train view."""
  sizes = [imagenet_views.image_size(j) for j in jpegs]
  half = [(-(-min(hw) // 2)) for hw in sizes]  # Shorter side at 1/2 scale.
  rows = []
  default = imagenet_views.DECODER
  try:
    for name, fn in imagenet_views.DECODERS.items():
      imagenet_views.DECODER = name
      pairs = list(zip(jpegs, half))
      rows.append(
        {
          'decoder': name,
          'decode_full': rate(lambda j, fn=fn: fn(j, None), jpegs),
          'decode_half': rate(lambda p, fn=fn: fn(p[0], p[1]), pairs),
          'train_view': rate(view_fn('train'), jpegs),
        }
      )
  finally:
    imagenet_views.DECODER = default
  return rows


def pipeline_rate(source) -> tuple[float, float]:
  """Images/s of the whole Grain pipeline with --num_workers processes.

  Returns:
    (images/s, main-process CPU seconds per 1000 images): the second is what
    the training process itself spends receiving batches.
  """
  b = FLAGS.batch_size
  if FLAGS.view == 'train':
    ds = imagenet.train_dataset(
      source,
      local_batch_size=b,
      seed=0,
      crop_size=FLAGS.crop_size,
      scale_range=(FLAGS.scale_min, FLAGS.scale_max),
      num_workers=FLAGS.num_workers,
      train_crop=FLAGS.train_crop,
      trivial_augment=FLAGS.trivial_augment,
    )
  else:
    ds = imagenet.eval_dataset(
      source,
      view=FLAGS.view,
      local_batch_size=b,
      num_workers=FLAGS.num_workers,
      resize_size=FLAGS.resize_size,
      crop_size=FLAGS.crop_size,
    )
  it = iter(ds)
  for _ in range(3):  # Worker start-up.
    next(it)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(FLAGS.batches):
    next(it)
  elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  if hasattr(it, 'close'):
    it.close()
  images = FLAGS.batches * b
  return images / elapsed, 1000 * cpu / images


def _use_config(config):
  """The flags that an experiment config decides, taken from it."""
  inp = config.input
  FLAGS.dataset, FLAGS.data_dir = inp.dataset, inp.data_dir
  if config_lib.family(config) != 'imagenet':
    raise app.UsageError(
      f'{inp.dataset} is not an ImageNet-family dataset: '
      'its input is decoded once into memory, not streamed'
    )
  FLAGS.crop_size = inp.image_size
  FLAGS.scale_min, FLAGS.scale_max = inp.scale_range
  FLAGS.train_crop, FLAGS.trivial_augment = inp.train_crop, inp.trivial_augment
  FLAGS.resize_size = config.eval.resize_size


def sample_jpegs(source) -> tuple[list[bytes], float]:
  """(JPEGs, records read per second): `--images` random records of `source`,
  re-encoded first with `--reencode_hw`."""
  n = min(FLAGS.images, len(source))
  indices = np.random.default_rng(0).permutation(len(source))[:n].tolist()
  jpegs = [source[i]['image'] for i in indices]
  read_rate = rate(lambda i: source[i], indices, min_seconds=1.0)  # Warm cache.
  if FLAGS.reencode_hw:
    hw = tuple(int(v) for v in FLAGS.reencode_hw)
    jpegs = [reencode(j, hw, FLAGS.reencode_quality) for j in jpegs]
  return jpegs, read_rate


def view_result(jpegs: list[bytes], read_rate: float) -> dict:
  """The setting, the JPEGs' mean size and the per-core rate of `--view`."""
  sizes = np.array([imagenet_views.image_size(j) for j in jpegs])
  return {
    'dataset': FLAGS.dataset,
    'split': FLAGS.split,
    'images': len(jpegs),
    'reencode_hw': FLAGS.reencode_hw or None,
    'reencode_quality': FLAGS.reencode_quality if FLAGS.reencode_hw else None,
    'view': FLAGS.view,
    'decoder': imagenet_views.DECODER,
    'crop_size': FLAGS.crop_size,
    'scale_range': [FLAGS.scale_min, FLAGS.scale_max],
    'mean_jpeg_bytes': float(np.mean([len(j) for j in jpegs])),
    'mean_hw': sizes.mean(axis=0).round(1).tolist(),
    'mean_megapixels': float(np.prod(sizes, axis=1).mean() / 1e6),
    'read_per_s': read_rate,
    'images_per_s_per_core': rate(view_fn(FLAGS.view), jpegs),
  }


def _print_view(result: dict):
  print(
    f'{FLAGS.dataset}:{FLAGS.split}, {result["images"]} images'
    + (f' re-encoded at {FLAGS.reencode_hw} q{FLAGS.reencode_quality}' if FLAGS.reencode_hw else '')
    + f': mean JPEG {result["mean_jpeg_bytes"]:,.0f} bytes, mean '
    f'{result["mean_hw"][0]:.0f}x{result["mean_hw"][1]:.0f} px'
  )
  print(f'records read (1 thread, page cache warm): {result["read_per_s"]:,.0f} /s')
  print(
    f'{FLAGS.view} view, decoder {imagenet_views.DECODER}: '
    f'{result["images_per_s_per_core"]:,.0f} images/s per core'
  )


def _print_decoders(rows: list[dict]):
  print(
    f'{"decoder":<12}{"decode full":>13}{"decode 1/2":>13}{"train view":>13}   (images/s per core)'
  )
  for row in rows:
    print(
      f'{row["decoder"]:<12}{row["decode_full"]:>13,.0f}'
      f'{row["decode_half"]:>13,.0f}{row["train_view"]:>13,.0f}'
    )


def _time_pipeline(source, result: dict):
  """Adds the whole pipeline's rate with `--num_workers` to `result`, and prints it."""
  if FLAGS.reencode_hw:
    print('pipeline timing reads the stored JPEGs (not re-encoded ones)')
  result['num_workers'] = FLAGS.num_workers
  result['pipeline_images_per_s'], result['main_cpu_s_per_1000'] = pipeline_rate(source)
  print(
    f'pipeline, {FLAGS.num_workers} workers, batch {FLAGS.batch_size}: '
    f'{result["pipeline_images_per_s"]:,.0f} images/s; main process CPU '
    f'{result["main_cpu_s_per_1000"]:.3f} s per 1000 images'
  )


def main(argv):
  del argv
  if FLAGS.config is not None:
    _use_config(FLAGS.config)
  cv2.setNumThreads(1)  # Per-core numbers: one thread.
  source = imagenet.open_source(FLAGS.dataset, FLAGS.split, FLAGS.data_dir)
  jpegs, read_rate = sample_jpegs(source)
  result = view_result(jpegs, read_rate)
  _print_view(result)
  if FLAGS.decoders:
    result['decoders'] = decoder_table(jpegs)
    _print_decoders(result['decoders'])
  if FLAGS.num_workers > 0:
    _time_pipeline(source, result)
  if FLAGS.json:
    with open(FLAGS.json, 'a') as f:
      f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  cli.run(main)
