"""The two variable layouts of `ResNet`: scanned stages and one entry per block.

With `scan_blocks=True` (the default) blocks 2..n of stage I share one
`nn.scan` body, so their variables are stacked along a leading block axis
under 'stageI_rest'; with `scan_blocks=False` they are 'stageI_block2' ..
'stageI_blockN'. 'stageI_block1' (stride and width change) is separate in both.
`unscan` and `rescan` convert one layout into the other by slicing and stacking
only, so a round trip is bit-exact.

Both take a whole variables dict ({'params': ..., 'batch_stats': ...}) or one
collection (`variables['params']`, `variables['batch_stats']`,
'intermediates'), told apart by the top-level keys. Leaves may be arrays
(jax or numpy; numpy stays numpy) or `jax.ShapeDtypeStruct`s, e.g. from
`abstract_variables`.
"""

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

_REST = re.compile(r'^(stage\d+)_rest$')
_BLOCK = re.compile(r'^(stage\d+)_block(\d+)$')
# Top-level modules of every `ResNet`; a mapping with any of these (or a stage
# entry) at the top is one collection, otherwise a dict of collections.
_MODULES = ('conv_init', 'bn_init', 'fc')


def _is_collection(tree: Mapping) -> bool:
  return any(k in _MODULES or _REST.match(k) or _BLOCK.match(k) for k in tree)


def _per_collection(fn, tree: Mapping) -> dict:
  if _is_collection(tree):
    return fn(tree)
  return {name: fn(sub) if isinstance(sub, Mapping) else sub for name, sub in tree.items()}


def _take(a, j: int):
  if isinstance(a, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(a.shape[1:], a.dtype)
  return a[j]


def _stack(*arrays):
  if isinstance(arrays[0], jax.ShapeDtypeStruct):
    shapes = {(a.shape, a.dtype) for a in arrays}
    if len(shapes) != 1:
      raise ValueError(f'cannot stack blocks of different shapes: {sorted(map(str, shapes))}')
    return jax.ShapeDtypeStruct((len(arrays),) + arrays[0].shape, arrays[0].dtype)
  if all(isinstance(a, np.ndarray) for a in arrays):
    return np.stack(arrays)
  return jnp.stack(arrays)


def _unscan_collection(tree: Mapping) -> dict:
  out = {}
  for name, sub in tree.items():
    match = _REST.match(name)
    if match is None:
      entries = [(name, sub)]
    else:
      length = jax.tree.leaves(sub)[0].shape[0]
      entries = [
        (f'{match[1]}_block{j + 2}', jax.tree.map(lambda a, j=j: _take(a, j), sub))
        for j in range(length)
      ]
    for key, value in entries:
      if key in out or (key != name and key in tree):
        raise ValueError(f'{key!r} is in both layouts: {sorted(tree)}')
      out[key] = value
  return out


def _rescan_collection(tree: Mapping) -> dict:
  later = {}  # stage -> {block number >= 2: variables}
  for name, sub in tree.items():
    match = _BLOCK.match(name)
    if match and int(match[2]) >= 2:
      later.setdefault(match[1], {})[int(match[2])] = sub
  out = {}
  for name, sub in tree.items():
    match = _BLOCK.match(name)
    if not (match and int(match[2]) >= 2):
      out[name] = sub
    elif int(match[2]) == 2:
      # The stacked entry takes block 2's place, so the key order follows the net.
      stage, blocks = match[1], later[match[1]]
      if sorted(blocks) != list(range(2, len(blocks) + 2)):
        raise ValueError(f'{stage} blocks {sorted(blocks)} are not 2..N without gaps')
      if f'{stage}_rest' in tree:
        raise ValueError(f'{stage!r} has both {stage}_rest and per-block entries')
      out[f'{stage}_rest'] = jax.tree.map(_stack, *(blocks[j] for j in sorted(blocks)))
  missing = sorted(stage for stage, blocks in later.items() if 2 not in blocks)
  if missing:
    raise ValueError(f'{missing} have later blocks but no block2')
  return out


def unscan(tree: Mapping) -> dict:
  """The per-block layout (`scan_blocks=False`) of scanned `ResNet` variables.

  Each 'stageI_rest' entry becomes 'stageI_block2' .. 'stageI_blockN', row j
  of every stacked leaf going to block j + 2; everything else is passed
  through. A tree already in the per-block layout comes back unchanged.

  Args:
    tree: a variables dict, or one collection of it (see the module docstring).

  Returns:
    A new dict of the same kind, in the per-block layout.
  """
  return _per_collection(_unscan_collection, tree)


def rescan(tree: Mapping) -> dict:
  """The scanned layout (`scan_blocks=True`) of per-block `ResNet` variables.

  'stageI_block2' .. 'stageI_blockN' are stacked, in block order, into
  'stageI_rest'; 'stageI_block1' stays as it is. The inverse of `unscan`.

  Args:
    tree: a variables dict, or one collection of it (see the module docstring).

  Returns:
    A new dict of the same kind, in the scanned layout.

  Raises:
    ValueError: when a stage's later blocks are not numbered 2..N without
      gaps, or a stage is in both layouts at once.
  """
  return _per_collection(_rescan_collection, tree)


def is_scanned(tree: Mapping) -> bool:
  """Whether `tree` (a variables dict or one collection) has stacked 'stageI_rest' entries."""
  if _is_collection(tree):
    return any(_REST.match(name) for name in tree)
  return any(
    isinstance(sub, Mapping) and _is_collection(sub) and is_scanned(sub) for sub in tree.values()
  )


def apply_per_block(model, variables: Mapping, *args, **kwargs):
  """`model.apply` computing scanned stages one block at a time.

  The same values as `model.apply(variables, ...)`, with the variables and any
  mutable collections it returns in the scanned layout, but the program has
  no loop over a stage's blocks: on XLA:CPU that saves stacking every block's
  saved activations for the backward pass (docs/speed.md), at a compile time
  growing with depth. A model that does not scan its stages is applied as it is.
  """
  if not model.scan_blocks:
    return model.apply(variables, *args, **kwargs)
  out = model.clone(scan_blocks=False).apply(unscan(variables), *args, **kwargs)
  if not kwargs.get('mutable'):
    return out
  y, updates = out
  return y, rescan(updates)
