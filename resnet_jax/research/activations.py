"""Naming a network's activations: the Fig. 7 responses and any module output.

The models sow each 3x3 layer's response (after its BN, before the addition
and ReLU) as 'response1'/'response2' of its block; `named_responses` names
them 'stageI_blockJ/responseK' in network order, unstacking scanned stages
('stageI_rest', stacked along axis 0) into one entry per block. `Capture`
does the same for any module output a researcher names with a regex on
module paths (flax `capture_intermediates`), e.g. 'stage2_block1/bn1'.
"""

import re
from collections.abc import Callable

import jax

from resnet_jax import models

_STAGE_BLOCK = re.compile(r'^stage(\d+)_block(\d+)$')
_STAGE_REST = re.compile(r'^stage(\d+)_rest$')


def named_responses(intermediates) -> list[tuple[str, jax.Array]]:
  """The sown Fig. 7 responses, in network order, with their layer names.

  Args:
    intermediates: the `intermediates` collection of
      `model.apply(..., mutable=['intermediates'])`.

  Returns:
    [('stage1_block1/response1', (B, H, W, C) array), ...] in network order; a
    scanned stage's stacked responses ('stageI_rest', axis 0) become
    'stageI_block2', 'stageI_block3', ...
  """
  blocks = []  # (stage, block, name, {response: array})
  for key, value in intermediates.items():
    if m := _STAGE_BLOCK.match(key):
      blocks.append(
        (int(m[1]), int(m[2]), key, {k: v[0] for k, v in value.items() if k.startswith('response')})
      )
    elif m := _STAGE_REST.match(key):
      stacked = {k: v[0] for k, v in value.items() if k.startswith('response')}
      if not stacked:
        continue
      length = next(iter(stacked.values())).shape[0]
      for j in range(length):
        blocks.append(
          (int(m[1]), j + 2, f'stage{m[1]}_block{j + 2}', {k: v[j] for k, v in stacked.items()})
        )
  out = []
  for _, _, name, responses in sorted(blocks, key=lambda b: b[:2]):
    out.extend((f'{name}/{k}', responses[k]) for k in sorted(responses))
  return out


def response_names(model: models.ResNet) -> list[str]:
  """The names `named_responses` gives `model`'s responses, in network order."""
  keys = ('response1', 'response2') if model.block_cls is models.BasicBlock else ('response2',)
  return [
    f'stage{i + 1}_block{j + 1}/{k}'
    for i, n in enumerate(model.stage_sizes)
    for j in range(n)
    for k in keys
  ]


def _name_filter(names) -> Callable[[str], bool]:
  """A predicate on activation names: a regex (full match), a callable, or a
  list of exact names."""
  if callable(names):
    return names
  if isinstance(names, str):
    pattern = re.compile(names)
    return lambda name: pattern.fullmatch(name) is not None
  wanted = set(names)
  return lambda name: name in wanted


def _module_name(mdl, method_name: str) -> str | None:
  """The name of a module call's output: its path ('stage1_block1/bn1'), the
  root's 'output'; None for calls that are not `__call__`."""
  if method_name != '__call__':
    return None
  return '/'.join(mdl.path) or 'output'


def _unscanned(name: str, stage_sizes) -> list[str]:
  """The per-block names of a (possibly) scanned module path: 'stage1_rest/bn1'
  -> ['stage1_block2/bn1', 'stage1_block3/bn1', ...]; other names as they are."""
  head, sep, tail = name.partition('/')
  m = _STAGE_REST.match(head)
  if not m:
    return [name]
  stage = int(m[1])
  rest = stage_sizes[stage - 1] - 1 if stage <= len(stage_sizes) else 0
  return [f'stage{stage}_block{j + 2}{sep}{tail}' for j in range(rest)]


class Capture:
  """Which module outputs to capture, and their order (recorded while tracing).

  flax calls the capture filter after each module call, in call order (a
  module after its submodules), so the order of first calls is network order.
  Scanned stages are traced once per stage (flax may trace a body twice; the
  first sighting counts) and unstacked block-major.
  """

  def __init__(self, names, stage_sizes):
    self.wanted = _name_filter(names)
    self.stage_sizes = tuple(stage_sizes)
    self.order = []  # Module paths (scanned ones as 'stageI_rest/...'), call order.
    self._seen = set()

  def __call__(self, mdl, method_name) -> bool:
    name = _module_name(mdl, method_name)
    if name is None or not any(self.wanted(n) for n in _unscanned(name, self.stage_sizes)):
      return False
    if name not in self._seen:
      self._seen.add(name)
      self.order.append(name)
    return True

  def extract(self, intermediates) -> list[tuple[str, jax.Array]]:
    """[(name, array)] of the captured outputs, in network order, scanned ones
    unstacked. A module called several times: its first call. A pytree output
    (the scanned block's (carry, None)): its first array."""
    runs = []  # [(stage-rest head or None, [paths])]: consecutive scanned paths grouped.
    for path in self.order:
      head = path.split('/')[0]
      scanned = head if _STAGE_REST.match(head) else None
      if scanned and runs and runs[-1][0] == scanned:
        runs[-1][1].append(path)
      else:
        runs.append((scanned, [path]))
    out = []
    for scanned, paths in runs:
      values = {p: self._value(intermediates, p) for p in paths}
      if scanned is None:
        out.extend((p, values[p]) for p in paths)
        continue
      per_path = {p: _unscanned(p, self.stage_sizes) for p in paths}
      length = len(per_path[paths[0]])
      for j in range(length):
        for p in paths:
          if self.wanted(per_path[p][j]):
            out.append((per_path[p][j], values[p][j]))
    return out

  @staticmethod
  def _value(intermediates, path):
    node = intermediates
    for part in [] if path == 'output' else path.split('/'):
      node = node[part]
    leaves = [x for x in jax.tree.leaves(node['__call__'][0]) if hasattr(x, 'shape')]
    if not leaves:
      raise ValueError(f'module {path!r} returned no array')
    return leaves[0]
