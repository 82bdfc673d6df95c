"""Helpers shared by the test modules: the toy problem, tiny configs, trainers.

Imported by test modules (pytest puts this directory on the path); the test
modules never import one another.
"""

import io
import os

import jax
import numpy as np
import PIL.Image

from resnet_jax import checkpointing, config_lib, data, distributed, experiment, models
from resnet_jax.data import cifar
from resnet_jax.research import activations
from resnet_jax.training import step as step_lib
from resnet_jax.weights import torchvision as tw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The local TFDS datasets (cifar10_jpeg, imagenette224) beside the checkout;
# tests that need them skip without them (see conftest's `needs_data`).
DATA_DIR = os.environ.get(
  'RESNET_JAX_TEST_DATA_DIR', os.path.join(ROOT, '..', 'shared', 'data', 'tfds')
)


def flat_fields(tree: dict, prefix: str = '') -> dict:
  """A nested config dict as {'a.b.c': value}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def has_dataset(name: str) -> bool:
  return os.path.isdir(os.path.join(DATA_DIR, name))


def png_bytes(image: np.ndarray) -> bytes:
  """`image` (uint8 HWC, or 2-D) encoded as a PNG file's bytes."""
  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, 'PNG')
  return out.getvalue()


def write_bytes(path, data: bytes):
  """Writes `data` to `path`, creating its folders."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


IMAGE = (8, 8, 3)  # CIFAR nets run on any size >= 4 px; tiny keeps compiles short.


def tiny_config(model='cifar_resnet20', **schedule):
  """A CIFAR config small enough to train in seconds at `IMAGE` size."""
  config = config_lib.cifar10(model)
  config.input.batch_size = 16
  config.input.eval_batch_size = 16
  config.schedule.total_steps = schedule.pop('total_steps', 6)
  config.schedule.boundaries = schedule.pop('boundaries', (3, 5))
  config.schedule.update(schedule)
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  return config


def fault_config():
  """The fault tests' run: 12 steps, evaluations and checkpoints every 3."""
  return tiny_config(total_steps=12, boundaries=(6, 9))


def tiny_data(n=64, seed=0):
  """A learnable toy problem: the label is the brightest of 10 bands."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.int32)
  images = rng.integers(0, 100, (n,) + IMAGE).astype(np.uint8)
  images[np.arange(n), labels % 8, :, labels // 8] += 150
  return cifar.ArraySplit(images, labels)


def tiny_splits():
  return tiny_data(64, 0), {'test': tiny_data(37, 1)}


def make_trainer(config, devices=None):
  model = experiment.model_from_config(config)
  dataset = data.create(config, preloaded=tiny_splits())
  return step_lib.Trainer(config, model, distributed.make_mesh(devices), dataset)


def zero_norm(trainer):
  """Normalisation to about [-2, 2], as real training's (raw 0..255 pixels
  make logits of hundreds: saturated softmax ties, amplified rounding)."""
  return jax.device_put(
    {'mean': np.full(IMAGE, 127.5, np.float32), 'std': np.full(3, 64.0, np.float32)},
    trainer.replicated,
  )


def fixed_batch(trainer, n=16):
  split = tiny_data(n)
  return trainer.to_global({'image': split.images, 'label': split.labels})


def run_steps(trainer, num_steps, batch, state=None):
  state = trainer.init_fn(zero_norm(trainer)) if state is None else state
  losses = []
  for _ in range(num_steps):
    state, metrics = trainer.train_fn(state, batch, {})
    losses.append(float(metrics['train_loss']))
  return state, losses


def saved_steps(workdir, config):
  manager = checkpointing.manager(str(workdir))
  steps = manager.all_steps()
  manager.close()
  return sorted(steps)


def final_params(workdir, config):
  manager = checkpointing.manager(workdir)
  trainer = make_trainer(config)
  state, data_state = checkpointing.restore(
    manager, manager.latest_step(), trainer.sharded_abstract_state()
  )
  manager.close()
  return jax.device_get(state), data_state


def patch_compiled_step(monkeypatch, on_call):
  """Wraps the compiled train step so that `on_call(n, out)` sees each call."""
  original = step_lib.Trainer.compile_train

  class Step:
    """Calls the compiled step, then `on_call`; otherwise behaves like it."""

    def __init__(self, compiled):
      self.compiled, self.calls = compiled, 0

    def __call__(self, *args):
      self.calls += 1
      return on_call(self.calls, self.compiled(*args))

    def memory_analysis(self):
      return self.compiled.memory_analysis()

  def compile_train(self, batch_size, resident=None):
    return Step(original(self, batch_size, resident))

  monkeypatch.setattr(step_lib.Trainer, 'compile_train', compile_train)


def random_batch_stats(variables, seed=1):
  """`variables` with random BN statistics (means ~0, variances in [0.5, 2]):
  every block's entries then differ, unlike the initial zeros and ones."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables['batch_stats'])
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  stats = [
    jax.random.uniform(k, a.shape, minval=0.5, maxval=2.0)
    if path[-1].key == 'var'
    else 0.2 * jax.random.normal(k, a.shape)
    for k, (path, a) in zip(keys, leaves)
  ]
  return {'params': variables['params'], 'batch_stats': treedef.unflatten(stats)}


def unscan(tree):
  """Renames stacked 'stageI_rest' variables to scan_blocks=False blocks."""
  return models.unscan(tree)


def layer_responses(intermediates) -> list:
  """The Fig. 7 response arrays of an `intermediates` collection, network order."""
  return [a for _, a in activations.named_responses(intermediates)]


def synthetic_state_dict(name: str, num_classes: int = 1000, seed: int = 0) -> dict:
  """A torchvision `name` state dict of seeded random numpy arrays.

  Exactly torchvision's keys, in its order, with its shapes and dtypes
  (`num_batches_tracked` int64 0-d zeros), drawn from
  `np.random.default_rng(seed)`. Convolutions are N(0, 2 / fan_out) and fc
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torchvision initialises them; BN gets
  weight U(0.5, 1.5), bias N(0, 0.2), running mean N(0, 0.2) and running var
  U(0.5, 2.0), so that no BN is the identity (torchvision's init would leave
  a BN bug unseen).
  """
  shapes = tw._abstract(tw.torchvision_model(name, num_classes))
  fc_fan_in = shapes[('params', 'fc', 'kernel')].shape[0]
  rng = np.random.default_rng(seed)
  out = {}
  for key, (path, row, kind) in tw.key_map(name).items():
    shape = tw._torch_shape(kind, shapes[path].shape if row is None else shapes[path].shape[1:])
    field = key.rpartition('.')[2]
    if kind == 'conv':  # kaiming_normal_(mode='fan_out', nonlinearity='relu').
      array = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[2] * shape[3])), shape)
    elif key.startswith('fc.'):  # nn.Linear's default init, weight and bias alike.
      bound = 1.0 / np.sqrt(fc_fan_in)
      array = rng.uniform(-bound, bound, shape)
    elif field == 'weight':
      array = rng.uniform(0.5, 1.5, shape)
    elif field == 'running_var':
      array = rng.uniform(0.5, 2.0, shape)
    else:  # BN bias and running_mean.
      array = rng.normal(0.0, 0.2, shape)
    out[key] = array.astype(np.float32)
    if field == 'running_var':
      out[key[: -len('running_var')] + 'num_batches_tracked'] = np.zeros((), np.int64)
  return out
