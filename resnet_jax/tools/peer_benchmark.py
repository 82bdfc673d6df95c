"""Our train step and evaluation beside PyTorch's, on this machine, in one run.

    python -m resnet_jax.tools.peer_benchmark --config=configs/cifar10_resnet20.py
    python -m resnet_jax.tools.peer_benchmark --config=configs/cifar10_resnet56.py \
        --rounds=5 --json=results/peer_benchmark_cpu.jsonl

Needs the `torch` extra. Each side runs in its own process, started once and
warmed up (our step compiled, PyTorch's first steps run): ours as every
command line runs it (one CPU device per core unless XLA_FLAGS or
JAX_NUM_CPU_DEVICES say otherwise), PyTorch with as many threads as there
are usable cores (`--threads`), channels_last, the net from
`tools.torch_resnet` (an independent definition of the same CIFAR net, the
same SGD with momentum and L2 weight decay, the same augmentation on the
batch). Rounds interleave the two (the order alternates), so that a machine
whose speed drifts treats both alike; each round times `--steps` train steps
of each, then `--eval_batches` evaluation batches (`input.eval_batch_size`
images each, no augmentation, BN with running statistics). Prints both
sides' images/s (median and range over the rounds) and the ratio;
`--json=FILE` appends the result. Synthetic images: the speed does not
depend on the pixels.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, cpu_devices, cpu_memory
from resnet_jax.tools import run_launcher

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (a CIFAR net).')
flags.DEFINE_integer('rounds', 5, 'Interleaved rounds.')
flags.DEFINE_integer('steps', 10, 'Train steps per side and round.')
flags.DEFINE_integer('eval_batches', 3, 'Evaluation batches per side and round (0: none).')
flags.DEFINE_integer('threads', None, "PyTorch's threads (default: the usable cores).")
flags.DEFINE_string('json', None, 'Also append the result as one JSON line to this file.')
flags.DEFINE_bool(
  'torch_huge_pages',
  False,
  "Give PyTorch's process glibc's huge-page tunable too (ours has it by default: cpu_memory).",
)
flags.DEFINE_enum('worker', None, ['jax', 'torch'], 'Internal: run as one side.')


class _JaxSide:
  def __init__(self, config):
    import jax

    from resnet_jax import evaluation
    from resnet_jax.tools import synthetic_step

    self.jax = jax
    self.prepared = synthetic_step.prepare(config)
    self.state = self.prepared.state
    trainer = self.prepared.trainer
    self.scorer = evaluation.Scorer(trainer.model, trainer.dataset, trainer.mesh)
    n = config.input.eval_batch_size
    rng = np.random.default_rng(0)
    self.eval_batch = {
      'image': rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      'label': rng.integers(0, 10, (n,), dtype=np.int32),
      'index': np.arange(n, dtype=np.int32),
      'mask': np.ones((n,), bool),
    }
    self.devices = f'{jax.device_count()} {jax.devices()[0].platform.upper()} devices'

  def train(self, steps):
    for _ in range(steps):
      p = self.prepared
      self.state, metrics = p.step_fn(self.state, p.batch, p.resident)
    self.jax.block_until_ready(metrics)

  def evaluate(self, batches):
    variables = {'params': self.state.params, 'batch_stats': self.state.batch_stats}
    for _ in range(batches):
      self.scorer(variables, self.state.norm, self.eval_batch)


class _TorchSide:
  def __init__(self, config, threads):
    import torch

    from resnet_jax.tools import torch_resnet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.step = torch_resnet.TrainStep(
      config.model,
      lr=config.schedule.base_lr,
      momentum=config.optimizer.momentum,
      weight_decay=config.optimizer.weight_decay,
    )
    b, n = config.input.batch_size, config.input.eval_batch_size
    self.images = torch.randint(0, 256, (b, 32, 32, 3), dtype=torch.uint8)
    self.labels = torch.randint(0, 10, (b,))
    self.eval_images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8)
    self.devices = f'{threads} threads, torch {torch.__version__}'

  def train(self, steps):
    for _ in range(steps):
      loss = self.step(self.images, self.labels)
    float(loss)

  def evaluate(self, batches):
    for _ in range(batches):
      self.step.evaluate(self.eval_images).sum().item()


def _serve(side):
  """Worker loop: 'train N' / 'eval N' on stdin -> seconds taken on stdout."""
  side.train(3)
  side.evaluate(1)
  print(json.dumps({'ready': side.devices}), flush=True)
  for line in sys.stdin:
    what, count = line.split()
    t0 = time.perf_counter()
    (side.train if what == 'train' else side.evaluate)(int(count))
    print(json.dumps({'seconds': time.perf_counter() - t0}), flush=True)


class _Worker:
  """One side in its own process."""

  def __init__(self, name, argv, env):
    self.name = name
    self.proc = subprocess.Popen(
      [sys.executable, '-m', 'resnet_jax.tools.peer_benchmark', f'--worker={name}', *argv],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
    )
    self.setting = self._reply()['ready']

  def _reply(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      cli.fail(f'the {self.name} side stopped (exit code {self.proc.wait()}); see its error above')
    return json.loads(line)

  def time(self, what: str, count: int) -> float:
    self.proc.stdin.write(f'{what} {count}\n')
    self.proc.stdin.flush()
    return self._reply()['seconds']

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def _summary(rates: list[float]) -> dict:
  return dict(
    median=round(float(np.median(rates)), 1), min=round(min(rates), 1), max=round(max(rates), 1)
  )


def compare(config, argv, rounds, steps, eval_batches) -> dict:
  """Interleaved rounds of both sides; images/s per side and the ratios."""
  # PyTorch as its users run it, with glibc's default (no huge pages), said
  # explicitly: the worker, a command line of ours, would otherwise start
  # itself again with them (cpu_memory).
  torch_env = dict(os.environ)
  tunables = [t for t in torch_env.get('GLIBC_TUNABLES', '').split(':') if t]
  kept = [t for t in tunables if not t.startswith(cpu_memory.TUNABLE)]
  huge_pages = f'{cpu_memory.TUNABLE}={int(FLAGS.torch_huge_pages)}'
  torch_env['GLIBC_TUNABLES'] = ':'.join(kept + [huge_pages])
  workers = {'jax': _Worker('jax', argv, os.environ), 'torch': _Worker('torch', argv, torch_env)}
  rates = {(n, w): [] for n in workers for w in ('train', 'eval')}
  try:
    for r in range(rounds):
      for name in ('jax', 'torch') if r % 2 == 0 else ('torch', 'jax'):
        worker = workers[name]
        seconds = worker.time('train', steps)
        rates[(name, 'train')].append(steps * config.input.batch_size / seconds)
        if eval_batches:
          seconds = worker.time('eval', eval_batches)
          rates[(name, 'eval')].append(eval_batches * config.input.eval_batch_size / seconds)
  finally:
    for worker in workers.values():
      worker.close()
  result = dict(
    model=config.model,
    batch_size=config.input.batch_size,
    eval_batch_size=config.input.eval_batch_size,
    rounds=rounds,
    jax_setting=workers['jax'].setting,
    torch_setting=workers['torch'].setting,
    jax_glibc_tunables=os.environ.get('GLIBC_TUNABLES'),
    torch_glibc_tunables=torch_env.get('GLIBC_TUNABLES'),
    cpu=run_launcher.cpu_name(),
    vector_extensions=_vector_extensions(),
  )
  for what in ('train', 'eval'):
    if rates[('jax', what)]:
      ours, theirs = _summary(rates[('jax', what)]), _summary(rates[('torch', what)])
      result[f'{what}_images_per_sec'] = {'jax': ours, 'torch': theirs}
      result[f'{what}_ratio'] = round(ours['median'] / theirs['median'], 2)
  return result


def _vector_extensions() -> str:
  """'AVX-512' or 'AVX2' (or what else the CPU reports), from /proc/cpuinfo."""
  try:
    with open('/proc/cpuinfo') as f:
      flags_line = next((line for line in f if line.startswith('flags')), '')
  except OSError:
    return 'unknown'
  have = set(flags_line.split())
  if 'avx512f' in have:
    return 'AVX-512'
  return 'AVX2' if 'avx2' in have else 'neither AVX2 nor AVX-512'


def describe(result: dict) -> str:
  lines = [
    f'{result["model"]} on {result["cpu"]} ({result["vector_extensions"]}), '
    f'{result["rounds"]} interleaved rounds',
    f'  ours: {result["jax_setting"]}; PyTorch: {result["torch_setting"]}',
  ]
  for what in ('train', 'eval'):
    if f'{what}_ratio' not in result:
      continue
    r = result[f'{what}_images_per_sec']
    size = result['batch_size'] if what == 'train' else result['eval_batch_size']
    lines.append(
      f'  {what} (batch {size}): ours {r["jax"]["median"]:.0f} images/s '
      f'({r["jax"]["min"]:.0f}-{r["jax"]["max"]:.0f}), PyTorch {r["torch"]["median"]:.0f} '
      f'({r["torch"]["min"]:.0f}-{r["torch"]["max"]:.0f}): ratio {result[f"{what}_ratio"]:.2f}'
    )
  return '\n'.join(lines)


def _worker_argv(argv) -> list[str]:
  """The command's own flags, passed on to the worker processes."""
  return [a for a in argv[1:] if not a.startswith('--json')]


def main(argv):
  config = FLAGS.config
  if config is None:
    cli.fail('--config is required: a CIFAR config such as configs/cifar10_resnet20.py')
  if FLAGS.worker == 'jax':
    return _serve(_JaxSide(config))
  threads = FLAGS.threads or cpu_devices.usable_cores()
  if FLAGS.worker == 'torch':
    return _serve(_TorchSide(config, threads))
  if not config.model.startswith('cifar_resnet'):
    cli.fail(f'--config: the PyTorch peer defines the CIFAR residual nets, not {config.model!r}')
  try:
    import torch  # noqa: F401
  except ImportError:
    cli.fail('PyTorch is not installed: pip install -e ".[torch]"')
  result = compare(config, _worker_argv(sys.argv), FLAGS.rounds, FLAGS.steps, FLAGS.eval_batches)
  print(describe(result), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, 'a') as f:
      f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  cli.run(main)
