"""Where the PyTorch peer's train step spends its time, op by op, grouped.

    python -m resnet_jax.tools.torch_step_profile
    taskset -c 0 python -m resnet_jax.tools.torch_step_profile --batch_size=64 --threads=1

Needs the `torch` extra. Runs `tools.torch_resnet.TrainStep` (the net and
step that `tools.peer_benchmark` times beside ours) on random images, times
`--steps` steps, then profiles as many with `torch.profiler` and prints each
group's self CPU time per step (convolutions forward and their gradients,
BatchNorm and ReLU each way, sums and copies, the rest) and the costliest
ops, to set beside `tools.step_profile`'s groups for our step
(docs/speed.md). The profiler adds a fixed cost per op, so the groups add up
to more than the unprofiled step time printed first.
"""

import collections
import time

from absl import flags

from resnet_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'cifar_resnet20', 'A CIFAR net (cifar_resnet20 to cifar_resnet110).')
flags.DEFINE_integer('batch_size', 128, 'Images per step.')
flags.DEFINE_integer('threads', 1, "PyTorch's intra-op threads.")
flags.DEFINE_integer('steps', 5, 'Timed steps, then as many profiled steps.')
flags.DEFINE_integer('top', 10, 'Also list this many of the costliest ops.')

# aten op -> group; other ops (autograd bookkeeping, allocation, the loss,
# the augmentation's indexing) are 'other'.
GROUPS = {
  'aten::mkldnn_convolution': 'convolution forward',
  'aten::convolution': 'convolution forward',
  'aten::_convolution': 'convolution forward',
  'aten::convolution_backward': 'convolution gradients',
  'aten::native_batch_norm': 'BatchNorm forward',
  'aten::_batch_norm_impl_index': 'BatchNorm forward',
  'aten::native_batch_norm_backward': 'BatchNorm backward',
  'aten::clamp_min': 'ReLU forward',
  'aten::relu': 'ReLU forward',
  'aten::threshold_backward': 'ReLU backward',
  'aten::add': 'sums and copies (shortcuts, gradients, optimizer)',
  'aten::add_': 'sums and copies (shortcuts, gradients, optimizer)',
  'aten::copy_': 'sums and copies (shortcuts, gradients, optimizer)',
}
ORDER = [*dict.fromkeys(GROUPS.values()), 'other']


def _profile(step, images, labels, steps):
  import torch.profiler

  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step(images, labels)
  return [(e.key, e.self_cpu_time_total / 1000 / steps) for e in prof.key_averages()]


def main(argv):
  del argv
  try:
    import torch

    from resnet_jax.tools import torch_resnet
  except ImportError:
    cli.fail('PyTorch is not installed: pip install -e ".[torch]"')
  try:
    torch_resnet.depth_to_n(FLAGS.model)
  except ValueError as e:
    cli.fail(f'--model: {e}')
  torch.set_num_threads(FLAGS.threads)
  torch.manual_seed(0)
  step = torch_resnet.TrainStep(FLAGS.model)
  images = torch.randint(0, 256, (FLAGS.batch_size, 32, 32, 3), dtype=torch.uint8)
  labels = torch.randint(0, 10, (FLAGS.batch_size,))
  for _ in range(3):
    step(images, labels)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    step(images, labels)
  step_ms = (time.perf_counter() - start) / FLAGS.steps * 1000
  ops = _profile(step, images, labels, FLAGS.steps)
  by_group = collections.Counter()
  for name, ms in ops:
    by_group[GROUPS.get(name, 'other')] += ms
  print(
    f'{FLAGS.model} batch {FLAGS.batch_size}, {FLAGS.threads} '
    f'thread{"s" if FLAGS.threads > 1 else ""}, torch '
    f'{torch.__version__}: {step_ms:.1f} ms per step unprofiled'
  )
  print(f'{"group":52} ms/step')
  for group in ORDER:
    print(f'{group:52} {by_group[group]:7.1f}')
  print(f'{"all ops (profiled)":52} {sum(by_group.values()):7.1f}')
  if FLAGS.top:
    print(f'\nthe {FLAGS.top} costliest ops:')
    for name, ms in sorted(ops, key=lambda op: -op[1])[: FLAGS.top]:
      print(f'  {ms:8.2f} ms  {name}')


if __name__ == '__main__':
  cli.run(main)
