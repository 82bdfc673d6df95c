"""What an experiment's config builds: its model, with the dataset's classes
and the platform's compute dtype."""

import copy
import math
import shutil
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import config_lib, data, models
from resnet_jax.data import cifar


def resolve_dtype(dtype: str | None) -> str:
  """'auto' -> bfloat16 on GPU/TPU (the paper's nets train fine in it, with
  float32 params and logits), float32 on CPU (XLA:CPU has no fast bf16)."""
  if dtype in (None, 'auto'):
    return 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  return dtype


def resolved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with what it leaves to the dataset filled in (the
  number of classes), so that the config a run saves builds its model alone."""
  config = copy.deepcopy(config)
  if config.model_options.get('num_classes') is None:
    config.model_options.num_classes = data.dataset_info(config.input).num_classes
  return config


def model_from_config(config: ml_collections.ConfigDict) -> models.ResNet:
  """The config's model, with the dataset's number of classes."""
  options = {k: v for k, v in config.model_options.items() if v is not None}
  options['dtype'] = resolve_dtype(options.get('dtype'))
  if 'num_classes' not in options:  # Training records it; older configs left it to the dataset.
    options['num_classes'] = data.dataset_info(config.input).num_classes
  return models.create_model(config.model, **options)


def train_image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """One training image's shape: the ImageNet crop `input.image_size`, or CIFAR's 32x32."""
  size = config.input.image_size if config_lib.family(config) == 'imagenet' else cifar.IMAGE_SIZE
  return (size, size, 3)


def model_summary(config: ml_collections.ConfigDict, depth: int = 1) -> str:
  """The config's model as a table of its stages and blocks (`depth` levels of
  modules) on one training image, then its parameter count."""
  model = model_from_config(config)
  shape = train_image_shape(config)
  tty = sys.stdout.isatty()  # Colours only on a terminal.
  table = nn.tabulate(
    model,
    jax.random.key(0),
    depth=depth,
    compute_flops=False,
    console_kwargs={
      'force_terminal': tty,
      'no_color': not tty,
      'width': shutil.get_terminal_size((120, 24)).columns if tty else 120,
    },
  )(jnp.zeros((1, *shape), jnp.float32), train=False)
  params = models.abstract_variables(model, shape)['params']
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  table = table.lstrip('\n').rstrip()  # Blank lines around it; the title's indent kept.
  return (
    f'{table}\n{config.model} on {shape[0]}x{shape[1]} images: {count:,} parameters '
    f'({count / 1e6:.2f}M; BatchNorm statistics not counted)'
  )
