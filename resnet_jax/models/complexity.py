"""Parameter and multiply-add counts of any model, read off the model itself.

Multiply-adds are counted from the jaxpr of one forward pass: every
convolution and every matrix product (dot_general), scaled by the trip count of
the scans that contain them. This is what the paper's Table 1 counts as FLOPs
(conv and fc multiply-adds; BN, ReLU, pooling and additions are left out).

    python -m resnet_jax.models.complexity [--models=resnet50,cifar_resnet110]

prints layers, parameters and multiply-adds of every model of the zoo (or of
`--models`) beside the paper's figures.
"""

import math

import jax
import jax.numpy as jnp
from absl import flags
from jax.extend import core as jax_core

from resnet_jax import cli, errors, models

FLAGS = flags.FLAGS
# Defined only when this module runs as the command line: imported as a
# library (by tests, notebooks), it leaves the flags to the program that
# imports it, which may define --models itself (tools.benchmark does).
if __name__ == '__main__':
  flags.DEFINE_string('models', None, 'Comma-separated model names (default: every model).')

# The paper's figures: Table 1 multiply-adds at 224x224 (option B), the exact
# option-B parameter counts of torchvision, Table 6 parameters of the CIFAR nets.
PAPER_MULT_ADDS = {
  'resnet18': 1.8e9,
  'resnet34': 3.6e9,
  'resnet50': 3.8e9,
  'resnet101': 7.6e9,
  'resnet152': 11.3e9,
  'plain18': 1.8e9,
  'plain34': 3.6e9,
}
PAPER_PARAMS = {
  'resnet18': 11_689_512,
  'resnet34': 21_797_672,
  'resnet50': 25_557_032,
  'resnet101': 44_549_160,
  'resnet152': 60_192_808,
  'cifar_resnet20': 0.27e6,
  'cifar_resnet32': 0.46e6,
  'cifar_resnet44': 0.66e6,
  'cifar_resnet56': 0.85e6,
  'cifar_resnet110': 1.7e6,
  'cifar_resnet1202': 19.4e6,
}


def _subjaxprs(eqn):
  for param in eqn.params.values():
    for p in param if isinstance(param, (list, tuple)) else (param,):
      if isinstance(p, jax_core.ClosedJaxpr):
        yield p.jaxpr
      elif isinstance(p, jax_core.Jaxpr):
        yield p


def _jaxpr_mult_adds(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      lhs, rhs = (v.aval for v in eqn.invars)
      out = eqn.outvars[0].aval
      dn = eqn.params['dimension_numbers']
      # Each output element needs (kernel window x input channels per group)
      # multiply-adds; the kernel's "in" dim is already per feature group.
      kernel_in = rhs.shape[dn.rhs_spec[1]]
      window = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
      total += math.prod(out.shape) * kernel_in * window
    elif name == 'dot_general':
      lhs = eqn.invars[0].aval
      (contract_lhs, _), _ = eqn.params['dimension_numbers']
      out = eqn.outvars[0].aval
      total += math.prod(out.shape) * math.prod(lhs.shape[d] for d in contract_lhs)
    elif name == 'cond':  # One branch runs (e.g. lax.platform_dependent).
      total += max(_jaxpr_mult_adds(j) for j in _subjaxprs(eqn))
    else:
      trips = eqn.params.get('length', 1) if name == 'scan' else 1
      total += trips * sum(_jaxpr_mult_adds(j) for j in _subjaxprs(eqn))
  return total


def count_params(model, image_size: int = 224) -> int:
  """Number of trainable parameters (BN running statistics excluded)."""
  variables = models.abstract_variables(model, (image_size, image_size, 3))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables['params']))


def count_mult_adds(model, image_size: int = 224) -> int:
  """Multiply-adds of one eval-mode forward pass on one image of this size."""
  variables = models.abstract_variables(model, (image_size, image_size, 3))
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return _jaxpr_mult_adds(jaxpr.jaxpr)


def count_layers(model, image_size: int = 224) -> int:
  """Weighted layers on the main path (convs and fc), as the paper counts depth.

  Projection shortcuts are not counted, as in the paper's model names.
  """
  variables = models.abstract_variables(model, (image_size, image_size, 3))
  layers = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables['params']):
    keys = [getattr(k, 'key', '') for k in path]
    if keys[-1] == 'kernel' and 'shortcut' not in keys:
      # A scanned stage stacks its blocks' kernels along a leading axis.
      layers += leaf.shape[0] if len(leaf.shape) in (3, 5) else 1
  return layers


def summary(names=None) -> list[dict]:
  """Rows of layers, params and multiply-adds for the named models."""
  rows = []
  for name in names or models.MODELS:
    model = models.create_model(name)
    size = 32 if model.stem == 'cifar' else 224
    rows.append(
      dict(
        name=name,
        image_size=size,
        layers=count_layers(model, size),
        params=count_params(model, size),
        mult_adds=count_mult_adds(model, size),
        paper_params=PAPER_PARAMS.get(name),
        paper_mult_adds=PAPER_MULT_ADDS.get(name),
      )
    )
  return rows


def _fmt(value, scale, digits, unit=''):
  return '-' if value is None else f'{value / scale:.{digits}f}{unit}'


def main(argv):
  del argv
  names = FLAGS.models.split(',') if FLAGS.models else None
  unknown = sorted(set(names or ()) - set(models.MODELS))
  if unknown:
    raise errors.ConfigError(
      f'unknown model(s) {unknown} in --models; valid: {", ".join(models.MODELS)}'
    )
  print_table(names)


def print_table(names=None):
  """Prints `summary(names)` beside the paper's figures."""
  header = (
    f'{"model":18s} {"input":>5s} {"layers":>6s} {"params":>12s} '
    f'{"paper":>12s} {"mult-adds":>10s} {"paper":>6s}'
  )
  print(header)
  print('-' * len(header))
  for r in summary(names):
    paper_params = r['paper_params']
    if paper_params is not None and r['image_size'] == 32:  # Table 6 rounds.
      paper_params_str = f'{paper_params / 1e6:g}M'
    elif paper_params is not None:
      paper_params_str = f'{paper_params:,}'
    else:
      paper_params_str = '-'
    print(
      f'{r["name"]:18s} {r["image_size"]:5d} {r["layers"]:6d} '
      f'{r["params"]:12,d} {paper_params_str:>12s} '
      f'{_fmt(r["mult_adds"], 1e9, 3, "G"):>10s} '
      f'{_fmt(r["paper_mult_adds"], 1e9, 1, "G"):>6s}'
    )
  print(
    '\nmult-adds: one eval forward pass on one image (conv + fc); paper: Table 1 '
    '(ImageNet, option B), torchvision exact counts, Table 6 (CIFAR).'
  )


if __name__ == '__main__':
  cli.run(main)
