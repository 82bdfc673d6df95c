"""Per-op times of a compiled XLA program, from a `jax.profiler` trace,
grouped by what each op does in a train step (read off the compiled HLO).

XLA:CPU runs one traced thunk per HLO instruction or fusion, named like it;
each one's own time (minus what is nested in it) counts in one of `GROUPS`.
"""

import collections
import dataclasses
import glob
import gzip
import json
import os
import re

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
_FILLS = {'fusion', 'broadcast', 'constant', 'parameter'}
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
  # CPU convolutions with tiny outputs are products of patches (models.cpu_conv).
  if 'convolution' in ops or ('dot' in ops and 'conv_as_product' in op_name):
    return 'convolution gradients' if backward else 'convolution forward'
  if opcode in ('while', 'conditional', 'call'):
    return 'loop and branch control'
  # Zero-filled buffers (_FILLS) are what a scan's stacked outputs are written into.
  if ops & {'dynamic-update-slice', 'dynamic-slice'} or ops <= _FILLS:
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


def trace_events(trace_dir: str) -> list[dict]:
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
