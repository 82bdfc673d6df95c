"""What an experiment's config builds: its model, with the dataset's classes
and the platform's compute dtype."""

import jax
import ml_collections

from resnet_jax import data, models


def resolve_dtype(dtype: str | None) -> str:
  """'auto' -> bfloat16 on GPU/TPU (the paper's nets train fine in it, with
  float32 params and logits), float32 on CPU (XLA:CPU has no fast bf16)."""
  if dtype in (None, 'auto'):
    return 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  return dtype


def model_from_config(config: ml_collections.ConfigDict) -> models.ResNet:
  """The config's model, with the dataset's number of classes."""
  options = {k: v for k, v in config.model_options.items() if v is not None}
  options['dtype'] = resolve_dtype(options.get('dtype'))
  options.setdefault('num_classes', data.DATASETS[config.input.dataset].num_classes)
  return models.create_model(config.model, **options)
