"""Train-step benchmark on synthetic data: one config, or a table of nets.

    python -m resnet_jax.tools.benchmark --config=configs/cifar10_resnet20.py \
        --config.input.batch_size=32 --config.model_options.dtype=bfloat16
    python -m resnet_jax.tools.benchmark --table=paper --table_out=results/throughput.md

Compiles the real train step (same code as training: augmentation, BN, SGD,
sharding over every device, K steps per call with
`--config.steps_per_dispatch=K`) ahead of time, then times `--steps` calls
after `--warmup` untimed ones, each call synchronised, and prints compile
time, median time per train step and images/s. An ImageNet config
(`--config=configs/imagenet_r50.py`) benchmarks at its crop size, 224x224.

`--table=paper` runs the paper-nets table: cifar_resnet20/56/110 at batch 128 and
resnet18/34/50/101/152 at batch 256, each in float32 and bfloat16, each from
its paper recipe (`--models`, `--dtypes` and `--set` change the list or the
recipes). `--profile_dir` writes a `jax.profiler` trace of a few steps of
each benchmark (open it with TensorBoard's profile plugin or Perfetto).
The input pipeline has its own benchmark: `python -m resnet_jax.tools.input_benchmark`.
"""

import json
import os
import platform
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from resnet_jax import cli, config_lib, models
from resnet_jax.tools import synthetic_step

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (one benchmark).', lock_config=False
)
flags.DEFINE_enum('table', None, ['paper'], 'Benchmark a table of nets instead of --config.')
flags.DEFINE_list('models', None, "With --table: these nets instead of the table's.")
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'With --table: compute dtypes.')
flags.DEFINE_multi_string(
  'set',
  [],
  'With --table: config overrides for every net, '
  'e.g. --set=steps_per_dispatch=10 --set=input.device_resident=True.',
)
flags.DEFINE_string('table_out', None, 'With --table: also write the markdown table here.')
flags.DEFINE_integer('steps', 30, 'Timed calls.')
flags.DEFINE_integer('warmup', 3, 'Untimed calls after compilation.')
flags.DEFINE_string('profile_dir', None, 'Write a jax.profiler trace of 5 calls here.')
flags.DEFINE_string('json', None, 'Also append each result as one JSON line to this file.')

PAPER_TABLE = {
  'cifar_resnet20': 128,
  'cifar_resnet56': 128,
  'cifar_resnet110': 128,
  'resnet18': 256,
  'resnet34': 256,
  'resnet50': 256,
  'resnet101': 256,
  'resnet152': 256,
}


def recipe(model: str) -> ml_collections.ConfigDict:
  """The paper's recipe for `model` (section 4.2 for CIFAR nets, 3.4 otherwise)."""
  if model not in models.MODELS:
    raise app.UsageError(f'unknown model {model!r}; valid: {", ".join(models.MODELS)}')
  return config_lib.recipe(model)


def benchmark(config, steps: int, warmup: int, profile_dir: str | None = None) -> dict:
  """Compiles and times the train step of `config` on random data.

  Returns:
    Dict with compile_s, step_ms (median per train step), step_ms_p10/p90,
    images_per_sec and the setting (model, batch, dtype, K, devices, versions).
  """
  prepared = synthetic_step.prepare(config)
  step_fn, state, batch, resident = prepared[:4]
  k = prepared.trainer.steps_per_dispatch
  batch_size = config.input.batch_size
  for _ in range(warmup):
    state, _ = step_fn(state, batch, resident)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batch, resident)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  if profile_dir:
    with jax.profiler.trace(profile_dir):
      for _ in range(5):
        state, metrics = step_fn(state, batch, resident)
      jax.block_until_ready(metrics)
  ms = 1000 * np.array(times) / k  # Per train step.
  step_ms = float(np.median(ms))
  return dict(
    model=config.model,
    batch_size=batch_size,
    dtype=str(getattr(prepared.trainer.model.dtype, 'name', prepared.trainer.model.dtype)),
    steps_per_dispatch=k,
    device_resident=bool(config.input.get('device_resident')),
    devices=f'{jax.device_count()}x {jax.devices()[0].device_kind}',
    init_s=round(prepared.init_s, 2),
    compile_s=round(prepared.compile_s, 2),
    step_ms=round(step_ms, 3),
    step_ms_p10=round(float(np.percentile(ms, 10)), 3),
    step_ms_p90=round(float(np.percentile(ms, 90)), 3),
    images_per_sec=round(1000 * batch_size / step_ms, 1),
    jax=jax.__version__,
    cpu=platform.processor() or platform.machine(),
  )


def describe(result: dict, steps: int) -> str:
  return (
    f'{result["model"]} batch {result["batch_size"]} {result["dtype"]} '
    f'K={result["steps_per_dispatch"]} on {result["devices"]}: compile '
    f'{result["compile_s"]:.1f} s, step {result["step_ms"]:.2f} ms (median of '
    f'{steps} calls; p10 {result["step_ms_p10"]:.2f}, p90 '
    f'{result["step_ms_p90"]:.2f}), {result["images_per_sec"]:.0f} images/s'
  )


def markdown_table(results: list[dict]) -> str:
  """Nets down, dtypes across: images/s and compile seconds."""
  dtypes = list(dict.fromkeys(r['dtype'] for r in results))
  rows = {}
  for r in results:
    rows.setdefault((r['model'], r['batch_size']), {})[r['dtype']] = r
  head = ['net', 'batch'] + [f'{d} images/s (compile s)' for d in dtypes]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for (model, batch), by_dtype in rows.items():
    cells = [
      f'{by_dtype[d]["images_per_sec"]:,.0f} ({by_dtype[d]["compile_s"]:.0f})'
      if d in by_dtype
      else ''
      for d in dtypes
    ]
    lines.append('| ' + ' | '.join([model, str(batch)] + cells) + ' |')
  first = results[0]
  lines.append('')
  lines.append(
    f'{first["devices"]}, jax {first["jax"]}, steps_per_dispatch='
    f'{first["steps_per_dispatch"]}, synthetic data, median of timed calls.'
  )
  return '\n'.join(lines) + '\n'


def _record(result: dict):
  if FLAGS.json:
    with open(FLAGS.json, 'a') as f:
      f.write(json.dumps(result) + '\n')


def main(argv):
  del argv
  if (FLAGS.config is None) == (FLAGS.table is None):
    raise app.UsageError('give exactly one of --config=FILE and --table=paper')
  if FLAGS.config is not None:
    config = FLAGS.config
    if config.model not in models.MODELS:
      raise app.UsageError(f'unknown model {config.model!r}')
    result = benchmark(config, FLAGS.steps, FLAGS.warmup, FLAGS.profile_dir)
    print(describe(result, FLAGS.steps), flush=True)
    _record(result)
    return
  results = []
  for model in FLAGS.models or PAPER_TABLE:
    for dtype in FLAGS.dtypes:
      config = recipe(model)
      config.input.batch_size = PAPER_TABLE.get(model, config.input.batch_size)
      config.model_options.dtype = dtype
      cli.apply_overrides(config, FLAGS.set, flag='--set=')
      profile = os.path.join(FLAGS.profile_dir, f'{model}_{dtype}') if FLAGS.profile_dir else None
      result = benchmark(config, FLAGS.steps, FLAGS.warmup, profile)
      print(describe(result, FLAGS.steps), flush=True)
      _record(result)
      results.append(result)
  table = markdown_table(results)
  print(table)
  if FLAGS.table_out:
    with open(FLAGS.table_out, 'w') as f:
      f.write(table)


if __name__ == '__main__':
  cli.run(main)
