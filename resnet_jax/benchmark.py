"""Train-step benchmark on synthetic data, for any config.

    python -m resnet_jax.benchmark --config=configs/cifar10_resnet20.py \
        --config.input.batch_size=32 --config.model_options.dtype=bfloat16

Compiles the real train step (same code as training: augmentation, BN, SGD,
sharding over every device) ahead of time, then times `--steps` steps after
`--warmup` untimed ones, each step synchronised, and prints compile time,
median step time and images/s. An ImageNet config
(`--config=configs/imagenet_r50.py`) benchmarks at its crop size, 224x224.
The input pipeline has its own benchmark: `python -m resnet_jax.input_benchmark`.
"""

import json
import platform
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from resnet_jax import config_lib, data, models, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
flags.DEFINE_integer('steps', 30, 'Timed steps.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
flags.DEFINE_string('json', None, 'Also append the result as one JSON line to this file.')
flags.mark_flags_as_required(['config'])


def benchmark(config, steps: int, warmup: int) -> dict:
  """Compiles and times the train step of `config` on random data.

  Returns:
    Dict with compile_s, step_ms (median), step_ms_p10/p90, images_per_sec and
    the setting (model, batch, dtype, devices, versions).
  """
  config_lib.validate(config, jax.device_count(), jax.process_count())
  model = train.create_model(config)
  dataset = data.create(config)
  trainer = train.Trainer(config, model, train.make_mesh(), dataset)
  image_shape = trainer.image_shape
  batch_size = config.input.batch_size
  norm = {k: np.full(s, 1.0 if k == 'std' else 120.0, np.float32)
          for k, s in dataset.normalization_shapes().items()}

  t0 = time.perf_counter()
  state = jax.block_until_ready(trainer.init_fn(jax.device_put(norm, trainer.replicated)))
  init_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  step_fn = trainer.compile_train(batch_size)
  compile_s = time.perf_counter() - t0

  rng = np.random.default_rng(0)
  local = batch_size // jax.process_count()
  batch = trainer.to_global({
      'image': rng.integers(0, 256, (local,) + image_shape, dtype=np.uint8),
      'label': rng.integers(0, model.num_classes, (local,), dtype=np.int32)})

  for _ in range(warmup):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  ms = 1000 * np.array(times)
  step_ms = float(np.median(ms))
  return dict(
      model=config.model, batch_size=batch_size,
      dtype=str(model.dtype.name if hasattr(model.dtype, 'name') else model.dtype),
      devices=f'{jax.device_count()}x {jax.devices()[0].device_kind}',
      init_s=round(init_s, 2), compile_s=round(compile_s, 2),
      step_ms=round(step_ms, 2), step_ms_p10=round(float(np.percentile(ms, 10)), 2),
      step_ms_p90=round(float(np.percentile(ms, 90)), 2),
      images_per_sec=round(1000 * batch_size / step_ms, 1),
      jax=jax.__version__, cpu=platform.processor() or platform.machine())


def main(argv):
  del argv
  config = FLAGS.config
  if config.model not in models.MODELS:
    raise app.UsageError(f'unknown model {config.model!r}')
  result = benchmark(config, FLAGS.steps, FLAGS.warmup)
  print(f"{result['model']} batch {result['batch_size']} {result['dtype']} on "
        f"{result['devices']}: compile {result['compile_s']:.1f} s, step "
        f"{result['step_ms']:.1f} ms (median of {FLAGS.steps}; p10 "
        f"{result['step_ms_p10']:.1f}, p90 {result['step_ms_p90']:.1f}), "
        f"{result['images_per_sec']:.0f} images/s")
  if FLAGS.json:
    with open(FLAGS.json, 'a') as f:
      f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  app.run(main)
