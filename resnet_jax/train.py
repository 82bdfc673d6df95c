"""Training and evaluation: one jit-compiled, mesh-sharded train step.

The train state is one pytree (`TrainState`) passed whole into a pure
`train_step(state, batch) -> (state, metrics)`, compiled once ahead of time
with explicit shardings over a 1-D `Mesh` whose `data` axis spans every device:
the batch is sharded, the state replicated and donated. No pmap, no
hand-written collectives: XLA inserts the gradient all-reduce.

BatchNorm and the device mesh: under `jax.jit` the model sees the *global*
batch, so by default BN statistics are computed over all examples of the step
(all devices) — with batch 128 that is one BN batch of 128, where the paper's
two GPUs each normalised over their own 64. `model_options.bn_group_size=64`
reproduces the paper's per-GPU statistics on any number of devices (groups of
64 consecutive examples; keep it a divisor of the per-device batch so that no
group straddles devices and XLA needs no cross-device traffic for it).
"""

import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import config_lib, input_pipeline, metric_writers, models


@flax.struct.dataclass
class TrainState:
  """Everything that training carries from step to step."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array
  # Section 4.2 warm-up: active until the smoothed training error drops below
  # the threshold; `train_error_ema` is that smoothed error.
  warmup_active: jax.Array
  train_error_ema: jax.Array


def create_model(config: ml_collections.ConfigDict) -> models.ResNet:
  """The config's model, with the dataset's number of classes."""
  options = {k: v for k, v in config.model_options.items() if v is not None}
  num_classes = input_pipeline.DATASETS[config.input.dataset]['num_classes']
  options.setdefault('num_classes', num_classes)
  return models.create_model(config.model, **options)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """base_lr divided by 1/decay_factor at each boundary (the paper's schedule)."""
  s = config.schedule
  return optax.piecewise_constant_schedule(
      s.base_lr, {int(b): s.decay_factor for b in s.boundaries})


def weight_decay_mask(params, exclude_bn_and_bias: bool):
  """True for the parameters that get weight decay.

  Names, not ranks, decide: scanned stages stack BN scales into 2-D arrays.
  """
  if not exclude_bn_and_bias:
    return jax.tree.map(lambda _: True, params)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def create_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """SGD with momentum and the paper's L2 weight decay.

  The decay is added to the gradient *before* momentum (an L2 penalty, as in
  Caffe/Torch), not decoupled. The learning rate is an injected hyperparameter
  so that the train step can set it (the warm-up rule depends on the error).
  """
  mask = weight_decay_mask(params, config.optimizer.exclude_bn_and_bias)

  @optax.inject_hyperparams
  def sgd_with_l2(learning_rate, momentum, weight_decay):
    return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                       optax.sgd(learning_rate, momentum=momentum))

  return sgd_with_l2(learning_rate=config.schedule.base_lr,
                     momentum=config.optimizer.momentum,
                     weight_decay=config.optimizer.weight_decay)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh with one `data` axis over all (or the given) devices."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), ('data',))


def initial_state(config, model, optimizer, image_shape) -> TrainState:
  """A fresh train state (call under jit with `out_shardings`)."""
  rng = jax.random.key(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1,) + image_shape, jnp.float32), train=False)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  num_classes = model.num_classes
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=optimizer.init(params), rng=state_rng,
      warmup_active=jnp.asarray(config.schedule.warmup_lr > 0),
      train_error_ema=jnp.asarray(1.0 - 1.0 / num_classes, jnp.float32))


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state: TrainState, batch, mean_image, *, model, optimizer, config):
  """One SGD step on a global batch; returns the new state and scalar metrics."""
  s = config.schedule
  rng = jax.random.fold_in(state.rng, state.step)
  images = input_pipeline.normalize(batch['image'], mean_image)
  images = input_pipeline.augment(rng, images)
  labels = batch['label']

  def loss_fn(params):
    logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                  images, train=True, mutable=['batch_stats'])
    return cross_entropy(logits, labels).mean(), (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  error = jnp.mean(jnp.argmax(logits, -1) != labels)

  schedule_lr = learning_rate_schedule(config)(state.step)
  lr = jnp.where(state.warmup_active, s.warmup_lr, schedule_lr)
  opt_state = state.opt_state._replace(
      hyperparams={**state.opt_state.hyperparams, 'learning_rate': lr})
  updates, opt_state = optimizer.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  ema = s.warmup_error_smoothing * state.train_error_ema + (1 - s.warmup_error_smoothing) * error
  warmup_active = (state.warmup_active & (ema >= s.warmup_until_error) &
                   (state.step + 1 < s.warmup_max_steps))
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, warmup_active=warmup_active,
                            train_error_ema=ema)
  metrics = {'train_loss': loss, 'train_error': error, 'learning_rate': lr}
  return new_state, metrics


def eval_step(state: TrainState, batch, mean_image, *, model):
  """Sums of loss and errors over the unmasked examples of a batch."""
  images = input_pipeline.normalize(batch['image'], mean_image)
  logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                       images, train=False)
  mask = batch['mask']
  wrong = (jnp.argmax(logits, -1) != batch['label']).astype(jnp.float32)
  return {'loss': jnp.sum(cross_entropy(logits, batch['label']) * mask),
          'errors': jnp.sum(wrong * mask), 'count': jnp.sum(mask)}


@dataclasses.dataclass
class Trainer:
  """The compiled functions of one experiment, and the shardings they use."""
  config: ml_collections.ConfigDict
  model: models.ResNet
  mesh: Mesh
  image_shape: tuple
  # Derived from the above in __post_init__.
  optimizer: optax.GradientTransformation = dataclasses.field(init=False)
  state_sharding: Any = dataclasses.field(init=False)
  batch_sharding: NamedSharding = dataclasses.field(init=False)
  replicated: NamedSharding = dataclasses.field(init=False)
  abstract_state: TrainState = dataclasses.field(init=False)
  init_fn: Any = dataclasses.field(init=False)
  train_fn: Any = dataclasses.field(init=False)
  eval_fn: Any = dataclasses.field(init=False)

  def __post_init__(self):
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P('data'))
    dummy_params = jax.eval_shape(
        lambda: self.model.init(jax.random.key(0), jnp.zeros((1,) + self.image_shape),
                                train=False))['params']
    self.optimizer = create_optimizer(self.config, dummy_params)
    init = functools.partial(initial_state, self.config, self.model, self.optimizer,
                             self.image_shape)
    self.abstract_state = jax.eval_shape(init)
    self.state_sharding = jax.tree.map(lambda _: self.replicated, self.abstract_state)
    self.init_fn = jax.jit(init, out_shardings=self.state_sharding)
    self.train_fn = jax.jit(
        functools.partial(train_step, model=self.model, optimizer=self.optimizer,
                          config=self.config),
        in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
        out_shardings=(self.state_sharding, self.replicated),
        donate_argnums=(0,))
    self.eval_fn = jax.jit(
        functools.partial(eval_step, model=self.model),
        in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
        out_shardings=self.replicated)

  def batch_spec(self, batch_size: int, with_mask: bool = False):
    """Abstract global batch, for ahead-of-time compilation."""
    spec = {'image': jax.ShapeDtypeStruct((batch_size,) + self.image_shape, jnp.uint8,
                                          sharding=self.batch_sharding),
            'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32,
                                          sharding=self.batch_sharding)}
    if with_mask:
      spec['mask'] = jax.ShapeDtypeStruct((batch_size,), jnp.float32,
                                          sharding=self.batch_sharding)
    return spec

  def compile_train(self, batch_size: int):
    """Compiles the train step ahead of time; returns the compiled step."""
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         self.abstract_state, self.state_sharding)
    mean = jax.ShapeDtypeStruct(self.image_shape, jnp.float32, sharding=self.replicated)
    return self.train_fn.lower(state, self.batch_spec(batch_size), mean).compile()

  def to_global(self, local_batch):
    """Per-process numpy batch -> global `jax.Array` sharded over `data`."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x),
        local_batch)


def evaluate(trainer: Trainer, state: TrainState, split, mean_image) -> dict:
  """Loss and error over every example of `split`, each counted exactly once."""
  local_batch = trainer.config.input.eval_batch_size // jax.process_count()
  totals = None
  for batch in input_pipeline.eval_batches(split, local_batch, jax.process_index(),
                                           jax.process_count()):
    out = trainer.eval_fn(state, trainer.to_global(batch), mean_image)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  count = int(totals['count'])
  if count != len(split):
    raise AssertionError(f'evaluated {count} examples, expected {len(split)}')
  return {'loss': totals['loss'] / count, 'error': totals['errors'] / count,
          'count': count}


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                           create=True),
      item_names=('state', 'data', 'meta'))


def _structure(config) -> dict:
  """What a checkpoint must agree on with the config that restores it."""
  opts = {k: v for k, v in config.model_options.items()
          if k not in ('dtype', 'bn_group_size', 'bn_momentum', 'bn_epsilon') and v is not None}
  return {'model': config.model, 'model_options': opts, 'dataset': config.input.dataset}


def check_checkpoint_matches(manager: ocp.CheckpointManager, config):
  """Fails fast if the workdir's latest checkpoint is of another experiment."""
  step = manager.latest_step()
  if step is None:
    return None
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  saved, wanted = meta.get('structure'), _structure(config)
  if saved != wanted:
    raise ValueError(
        f'the workdir holds a checkpoint (step {step}) of {saved}, but the config '
        f'asks for {wanted}. Use a fresh --workdir, or the config it was trained with.')
  return step


def restore_state(manager, step, trainer: Trainer):
  """Restores (state, data-iterator state) of `step`, sharded as the trainer wants."""
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        trainer.abstract_state, trainer.state_sharding)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
  except Exception as e:  # Orbax raises many types; say what to do.
    raise ValueError(
        f'could not restore the checkpoint of step {step} in {manager.directory}: '
        f'{type(e).__name__}: {e}. It was left untouched; remove that step '
        'directory to resume from an earlier one, or use a fresh --workdir.') from e
  return restored['state'], restored['data']


def _load_data(config):
  """Train (and held-out validation) and test splits, decoded into memory."""
  inp = config.input
  info = input_pipeline.DATASETS[inp.dataset]
  load = functools.partial(input_pipeline.load_split, inp.dataset, data_dir=inp.data_dir)
  evals = {}
  if inp.holdout_validation:
    keep = info['num_train'] - inp.num_holdout
    train = load(f'{info["train_split"]}[:{keep}]')
    evals['val'] = load(f'{info["train_split"]}[{keep}:]')
  else:
    train = load(info['train_split'])
  evals['test'] = load(info['test_split'])
  return train, evals


def _check_finite(pending_metrics, step):
  """Raises if any fetched train loss is not finite (before anything is saved)."""
  losses = np.array([m['train_loss'] for m in pending_metrics])
  if not np.all(np.isfinite(losses)):
    bad = int(np.argmin(np.isfinite(losses)))
    raise FloatingPointError(
        f'non-finite training loss ({losses[bad]}) at or before step {step}; '
        'training stopped and the last good checkpoint was kept. Lower '
        'schedule.base_lr or use a warm-up (schedule.warmup_lr) and resume.')


def _summarize(pending_metrics) -> dict:
  """Means over the logging interval; the learning rate as it is now."""
  out = {k: float(np.mean([m[k] for m in pending_metrics])) for k in pending_metrics[0]}
  out['learning_rate'] = float(pending_metrics[-1]['learning_rate'])
  return out


class _Preemption:
  """Turns SIGTERM into a flag that the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no handler, no preemption saves.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       data=None) -> dict:
  """Trains the config's model, resuming from `workdir` if it holds a checkpoint.

  Args:
    config: an experiment config (see `config_lib.cifar10`).
    workdir: where checkpoints, `metrics.jsonl`, TensorBoard files and
      `config.json` go.
    data: optional pre-loaded `(train_split, {name: eval_split})` of
      `input_pipeline.ArraySplit`s (tests, notebooks); None reads
      `config.input.dataset`.

  Returns:
    The last evaluation's metrics, e.g. {'test_error': ..., 'test_loss': ...}.
  """
  config_lib.validate(config, jax.device_count(), jax.process_count())
  if data is None:
    input_pipeline.check_dataset(config.input.dataset, config.input.data_dir)
  with checkpoint_manager(workdir, config) as manager:
    return _train(config, workdir, data, manager)


def _train(config, workdir, data, manager) -> dict:
  """`train_and_evaluate` once the config is checked and the manager open."""
  latest = check_checkpoint_matches(manager, config)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  train_split, eval_splits = data or _load_data(config)
  mean_host = input_pipeline.mean_image(train_split)
  image_shape = train_split.images.shape[1:]
  model = create_model(config)
  trainer = Trainer(config, model, make_mesh(), image_shape)
  mean_image = jax.device_put(mean_host, trainer.replicated)

  local_batch = config.input.batch_size // jax.process_count()
  data = iter(input_pipeline.train_dataset(train_split, local_batch, config.seed,
                                           jax.process_index(), jax.process_count()))
  if latest is not None:
    state, data_state = restore_state(manager, latest, trainer)
    data.set_state(data_state)
    print(f'Resumed from step {latest} in {workdir}', flush=True)
  else:
    state = trainer.init_fn()

  t0 = time.time()
  compiled_step = trainer.compile_train(config.input.batch_size)
  compile_seconds = time.time() - t0
  memory = compiled_step.memory_analysis()
  if memory is not None and jax.process_index() == 0:
    print(f'Compiled train step in {compile_seconds:.1f}s; temp memory '
          f'{getattr(memory, "temp_size_in_bytes", 0) / 2**20:.1f} MiB per device',
          flush=True)

  writer = metric_writers.MetricWriter(workdir, config.schedule.total_steps)
  batches = input_pipeline.Prefetcher(data, trainer.to_global)
  total = config.schedule.total_steps
  stop_at = min(total, config.stop_after_steps or total)
  step = int(jax.device_get(state.step))
  last_eval = {}

  def save(step):
    meta = {'structure': _structure(config), 'step': step}
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(batches.state()),
        meta=ocp.args.JsonSave(meta)), force=True)

  def run_eval(step):
    results = {}
    for name, split in eval_splits.items():
      out = evaluate(trainer, state, split, mean_image)
      results[f'{name}_error'], results[f'{name}_loss'] = out['error'], out['loss']
    writer.write(step, results)
    writer.progress(step, results, None)
    return results

  pending, tick, tick_step = [], time.time(), step
  try:
    with _Preemption() as preemption:
      while step < stop_at:
        state, metrics = compiled_step(state, next(batches), mean_image)
        step += 1
        pending.append(metrics)
        is_last = step == stop_at
        log_now = step % config.log_every_steps == 0 or is_last
        ckpt_now = step % config.checkpoint_every_steps == 0 or is_last or preemption.requested
        if log_now or ckpt_now:
          pending = jax.device_get(pending)
          _check_finite(pending, step)
        if log_now:
          elapsed = time.time() - tick
          seconds_per_step = elapsed / (step - tick_step)
          scalars = _summarize(pending)
          scalars['warmup_active'] = float(jax.device_get(state.warmup_active))
          scalars['step_time_ms'] = 1000 * seconds_per_step
          scalars['images_per_sec'] = config.input.batch_size / seconds_per_step
          writer.write(step, scalars)
          writer.progress(step, scalars, seconds_per_step)
          pending, tick, tick_step = [], time.time(), step
        if step % config.eval_every_steps == 0 or step == total:
          last_eval = run_eval(step)
        if ckpt_now:
          save(step)
        if not pending:  # Keep eval and checkpoint time out of the step timing.
          tick = time.time()
        if preemption.requested:
          print(f'SIGTERM: saved a checkpoint at step {step}; exiting.', flush=True)
          break
  finally:
    batches.close()
    manager.wait_until_finished()
    writer.close()
  return last_eval


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, *,
                     data=None) -> dict:
  """Evaluates the latest checkpoint of a (finished) workdir; trains nothing.

  `data` is as in `train_and_evaluate`. Writes `eval.json` in the workdir.
  """
  config_lib.validate(config, jax.device_count(), jax.process_count())
  if data is None:
    input_pipeline.check_dataset(config.input.dataset, config.input.data_dir)
  with checkpoint_manager(workdir, config) as manager:
    step = check_checkpoint_matches(manager, config)
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints to evaluate; '
                              'train first or point --workdir at a trained run.')
    train_split, eval_splits = data or _load_data(config)
    trainer = Trainer(config, create_model(config), make_mesh(),
                      train_split.images.shape[1:])
    state, _ = restore_state(manager, step, trainer)
  mean_image = jax.device_put(input_pipeline.mean_image(train_split), trainer.replicated)
  results = {'step': step}
  for name, split in eval_splits.items():
    out = evaluate(trainer, state, split, mean_image)
    results[f'{name}_error'] = float(out['error'])
    results[f'{name}_loss'] = float(out['loss'])
    results[f'{name}_count'] = out['count']
  if jax.process_index() == 0:
    print(json.dumps(results), flush=True)
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results
