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
whose speed drifts treats both alike; each round runs `--warmup_steps`
untimed train steps of each (the first step after the other side's round
pays for memory the VM reclaimed meanwhile: docs/speed.md), times `--steps`
train steps, then `--eval_batches` evaluation batches (`input.eval_batch_size`
images each, no augmentation, BN with running statistics). Prints both
sides' images/s (median and range over the rounds) and the ratio;
`--json=FILE` appends the result. Synthetic images: the speed does not
depend on the pixels.
"""

import json
import os
import sys
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, cpu_devices
from resnet_jax.tools import peer_rounds

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (a CIFAR net).')
flags.DEFINE_integer('rounds', 5, 'Interleaved rounds.')
flags.DEFINE_integer('steps', 10, 'Train steps per side and round.')
flags.DEFINE_integer(
  'warmup_steps',
  1,
  'Untimed train steps per side at the start of each round (0: none): the step '
  'speed without what a step pays after the other side ran (docs/speed.md).',
)
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
    count = jax.device_count()
    platform = jax.devices()[0].platform.upper()
    self.devices = f'{count} {platform} device{"s" if count > 1 else ""}'

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
    self.devices = f'{threads} thread{"s" if threads > 1 else ""}, torch {torch.__version__}'

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
  argv = _worker_argv(sys.argv)
  result = peer_rounds.compare(
    config,
    argv,
    FLAGS.rounds,
    FLAGS.steps,
    FLAGS.eval_batches,
    FLAGS.warmup_steps,
    FLAGS.torch_huge_pages,
  )
  print(peer_rounds.describe(result), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, 'a') as f:
      f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  cli.run(main)
