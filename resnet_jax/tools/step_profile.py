"""Where the train step's time goes: per-op times of the compiled step, grouped.

    python -m resnet_jax.tools.step_profile --config=configs/cifar10_resnet20.py
    python -m resnet_jax.tools.step_profile --config=configs/cifar10_resnet56.py --top=25

Compiles the real train step (as `tools.benchmark` does, on synthetic data),
traces `--steps` calls with `jax.profiler`, and attributes the time of every
executed op (XLA:CPU runs one traced thunk per HLO instruction or fusion) to a
group read off the compiled HLO: convolutions forward and their gradients,
BatchNorm forward and backward, other elementwise work, transposes and copies,
the scan's stacking of per-block values, collectives, the optimizer update and
metrics, the on-device augmentation, and loop/branch control. Prints
milliseconds per train step summed over the devices' threads (CPU time, not
wall time), the share of each group, and the costliest ops. Times are the ops'
own (self) time: a conditional's or a loop's inner ops count in their groups.
"""

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile

import jax
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli
from resnet_jax.tools import synthetic_step

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
flags.DEFINE_integer('steps', 5, 'Traced train steps.')
flags.DEFINE_integer('top', 15, 'Also list this many of the costliest ops.')
flags.DEFINE_string('trace_dir', None, 'Keep the trace here (default: a temporary directory).')

GROUPS = (
  'convolution forward',
  'convolution gradients',
  'BatchNorm forward',
  'BatchNorm backward',
  'elementwise forward (ReLU, shortcuts, pool, fc, loss)',
  'elementwise backward',
  'transposes and copies',
  'scan: stacking per-block values',
  'collectives (gradient all-reduce)',
  'optimizer update and metrics',
  'augmentation',
  'loop and branch control',
)

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%([\w.\-]+) ')
_CALLS = re.compile(r'calls=%([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass
class Instruction:
  opcode: str
  op_name: str
  fused_opcodes: frozenset


def parse_hlo(text: str) -> dict[str, Instruction]:
  """Instruction name -> its opcode, JAX op name and (fusions) inner opcodes."""
  computations, current, raw = collections.defaultdict(set), None, {}
  for line in text.splitlines():
    if (m := _COMPUTATION.match(line)) and line.rstrip().endswith('{'):
      current = m.group(1)
      continue
    if (m := _INSTRUCTION.match(line)) is None:
      continue
    name, _, opcode, rest = m.groups()
    computations[current].add(opcode)
    calls = _CALLS.search(rest)
    op_name = _OP_NAME.search(rest)
    raw[name] = (opcode, op_name.group(1) if op_name else '', calls.group(1) if calls else None)
  return {
    name: Instruction(opcode, op_name, frozenset(computations.get(calls, ())))
    for name, (opcode, op_name, calls) in raw.items()
  }


_AUGMENT = ('augment', '_randint', '_bernoulli', 'threefry', 'normalize', 'preprocess')
_MOVES = {'transpose', 'copy', 'bitcast', 'reshape', 'parameter', 'broadcast', 'slice', 'reverse'}


def group_of(instruction: Instruction) -> str:
  """The group of `GROUPS` that an executed instruction's time counts in."""
  opcode, op_name = instruction.opcode, instruction.op_name
  ops = instruction.fused_opcodes | {opcode}
  backward = 'transpose(jvp' in op_name
  if ops & {'all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute'}:
    return 'collectives (gradient all-reduce)'
  if any(key in op_name for key in _AUGMENT):
    return 'augmentation'
  if 'convolution' in ops:
    return 'convolution gradients' if backward else 'convolution forward'
  if opcode in ('while', 'conditional', 'call'):
    return 'loop and branch control'
  if ops & {'dynamic-update-slice', 'dynamic-slice'} or ops <= {
    'fusion',
    'broadcast',
    'constant',
    'parameter',
  }:
    # Zero-filled buffers are what a scan's stacked outputs are written into.
    return 'scan: stacking per-block values'
  if ops <= _MOVES or (ops & {'transpose', 'copy'} and not ops & {'reduce', 'convolution'}):
    return 'transposes and copies'
  if 'jvp(' not in op_name:
    return 'optimizer update and metrics'
  if re.search(r'/(bn\w*|BatchNorm\w*)/', op_name):
    return 'BatchNorm backward' if backward else 'BatchNorm forward'
  return (
    'elementwise backward' if backward else 'elementwise forward (ReLU, shortcuts, pool, fc, loss)'
  )


def self_times(trace_events: list[dict]) -> dict[str, float]:
  """Event name -> its total own time in microseconds (its duration minus
  that of the events nested in it), over every thread of the trace."""
  by_thread = collections.defaultdict(list)
  for e in trace_events:
    if e.get('ph') == 'X' and 'dur' in e:
      by_thread[(e['pid'], e['tid'])].append((float(e['ts']), float(e['dur']), e['name']))
  own = collections.Counter()
  for events in by_thread.values():
    events.sort(key=lambda x: (x[0], -x[1]))
    open_spans = []  # (end, name) of the enclosing events.
    for ts, dur, name in events:
      while open_spans and open_spans[-1][0] <= ts:
        open_spans.pop()
      if open_spans:
        own[open_spans[-1][1]] -= dur
      own[name] += dur
      open_spans.append((ts + dur, name))
  return own


def attribute(hlo_text: str, trace_events: list[dict], steps: int):
  """(ms per step by group, ms per step by op name) for the ops of the HLO."""
  instructions = parse_hlo(hlo_text)
  by_group, by_op = collections.Counter(), collections.Counter()
  for name, micros in self_times(trace_events).items():
    if name in instructions:
      ms = micros / 1000 / steps
      by_group[group_of(instructions[name])] += ms
      by_op[name] += ms
  return by_group, by_op, instructions


def _trace_events(trace_dir: str) -> list[dict]:
  paths = glob.glob(os.path.join(trace_dir, 'plugins', 'profile', '*', '*.trace.json.gz'))
  if not paths:
    raise RuntimeError(f'jax.profiler wrote no trace.json.gz under {trace_dir}')
  with gzip.open(sorted(paths)[-1]) as f:
    data = json.load(f)
  return data['traceEvents'] if isinstance(data, dict) else data


def report(by_group, by_op, instructions, top: int) -> str:
  total = sum(by_group.values())
  lines = [f'{"group":<56} {"ms/step":>9} {"share":>6}']
  for group in GROUPS:
    ms = by_group.get(group, 0.0)
    lines.append(f'{group:<56} {ms:9.1f} {100 * ms / total:5.1f}%')
  lines.append(f'{"all ops (CPU time over the devices)":<56} {total:9.1f}')
  lines.append('')
  lines.append(f'the {top} costliest ops:')
  for name, ms in by_op.most_common(top):
    inst = instructions[name]
    where = re.sub(r'^jit\(train_steps\)/', '', inst.op_name)[-70:]
    lines.append(f'{ms:8.2f} ms  {name:<40} {group_of(inst):<34} {where}')
  return '\n'.join(lines)


def main(argv):
  del argv
  config = FLAGS.config
  step_fn, state, batch, resident, _ = synthetic_step.prepare(config)
  for _ in range(2):
    state, metrics = step_fn(state, batch, resident)
  jax.block_until_ready(metrics)
  trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix='step_profile_')
  with jax.profiler.trace(trace_dir):
    for _ in range(FLAGS.steps):
      state, metrics = step_fn(state, batch, resident)
    jax.block_until_ready(metrics)
  k = config.get('steps_per_dispatch', 1)
  by_group, by_op, instructions = attribute(
    step_fn.as_text(), _trace_events(trace_dir), FLAGS.steps * k
  )
  print(
    f'{config.model} batch {config.input.batch_size} on {jax.device_count()} '
    f'{jax.devices()[0].platform.upper()} devices; {FLAGS.steps * k} traced steps'
  )
  print(report(by_group, by_op, instructions, FLAGS.top))


if __name__ == '__main__':
  cli.run(main)
