"""The real train step of a config, compiled, with a fresh state and random
input: what the train-step benchmarks and the step profile run."""

import time
from typing import Any, NamedTuple

import jax
import numpy as np

from resnet_jax import config_validation, data, distributed, experiment
from resnet_jax.training import step as step_lib


def synthetic_input(trainer, config, num_classes):
  """One dispatch's global input and the device-resident split (or {})."""
  rng = np.random.default_rng(0)
  k = trainer.steps_per_dispatch
  lead = (k,) if k > 1 else ()
  local = config.input.batch_size // jax.process_count()
  if config.input.get('device_resident'):
    # The paper's 50k CIFAR training images (the dataset itself is not read).
    n = data.catalog.dataset_info(config.input).num_train or 50_000
    resident = trainer.put_resident(
      {
        'image': rng.integers(0, 256, (n,) + trainer.image_shape, dtype=np.uint8),
        'label': rng.integers(0, num_classes, (n,), dtype=np.int32),
      }
    )
    batch = {'index': rng.integers(0, n, lead + (local,), dtype=np.int32)}
    return trainer.to_global(batch), resident
  batch = {
    'image': rng.integers(0, 256, lead + (local,) + trainer.image_shape, dtype=np.uint8),
    'label': rng.integers(0, num_classes, lead + (local,), dtype=np.int32),
  }
  return trainer.to_global(batch), {}


class SyntheticStep(NamedTuple):
  """A compiled train step and what it runs on: `step_fn(state, batch, resident)`
  runs one dispatch; `trainer` holds the model, dataset and mesh."""

  step_fn: Any
  state: step_lib.TrainState
  batch: dict
  resident: dict
  trainer: step_lib.Trainer
  init_s: float
  compile_s: float


def prepare(config) -> SyntheticStep:
  """The compiled train step of `config`, a fresh state and synthetic input."""
  config_validation.validate(config, jax.device_count(), jax.process_count())
  model = experiment.model_from_config(config)
  dataset = data.create(config)
  trainer = step_lib.Trainer(config, model, distributed.make_mesh(), dataset)
  norm = {
    key: np.full(s, 1.0 if key == 'std' else 120.0, np.float32)
    for key, s in dataset.normalization_shapes().items()
  }
  t0 = time.perf_counter()
  state = jax.block_until_ready(trainer.init_fn(jax.device_put(norm, trainer.replicated)))
  init_s = time.perf_counter() - t0
  batch, resident = synthetic_input(trainer, config, model.num_classes)
  t0 = time.perf_counter()
  step_fn = trainer.compile_train(config.input.batch_size, resident)
  compile_s = time.perf_counter() - t0
  return SyntheticStep(step_fn, state, batch, resident, trainer, init_s, compile_s)
