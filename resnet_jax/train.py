"""Training: one jit-compiled, mesh-sharded train step, and the loop around it.

The train state is one pytree (`TrainState`) passed whole into a pure
`train_step(state, batch) -> (state, metrics)`, compiled once ahead of time
with explicit shardings over a 1-D `Mesh` whose `data` axis spans every device:
the batch is sharded, the state replicated and donated. No pmap, no
hand-written collectives: XLA inserts the gradient all-reduce.

The dataset (`data.create(config)`) decides everything per-dataset: host
augmentation, the device-side preprocessing inside the step, normalisation
constants (kept in the state, so they travel in every checkpoint) and the
evaluation views. Checkpoints are `checkpointing`'s; test protocols are
`evaluation`'s.

BatchNorm and the device mesh: under `jax.jit` the model sees the *global*
batch, so by default BN statistics are computed over all examples of the step
(all devices). `model_options.bn_group_size=64` reproduces the paper's per-GPU
statistics on any number of devices (groups of 64 consecutive examples, inside
one device or spanning whole devices; see `models.GroupBatchNorm`).

Many steps per dispatch: small CIFAR nets on a GPU are bound by the per-step
launch and host round-trip, not by FLOPs. `config.steps_per_dispatch=K` runs K
steps inside one compiled call (`lax.scan` of the same `train_step` over K
batches stacked on a leading axis) and `config.input.device_resident=True`
keeps CIFAR's training images on the devices, so the host sends only K x B
example indices per call. Results agree with K single steps to float32
rounding; logging, evaluation and checkpoints happen at multiples of K
(`config_lib.validate` checks).

Many hosts: every process runs this same loop on its own share of the data
(`jax.make_array_from_process_local_data` builds the global batch), saves
every checkpoint together with the others, and stops at the step they agree
on (`distributed.StopRequest`). Only process 0 writes logs and JSON files.
The host waits for step n-1 before dispatching step n+1: never more than one
step runs ahead, so a stop request is honoured within a step or two and a
non-finite loss is caught at its own step.
"""

import collections
import dataclasses
import functools
import time
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import (checkpointing, config_lib, distributed, errors, evaluation,
                        metric_writers, models)
from resnet_jax import data as data_lib


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
  # Section 3.4's "divide by 10 when the error plateaus": its lr scale.
  plateau: optax.contrib.ReduceLROnPlateauState
  # Input normalisation {'mean', 'std'}: evaluation needs no training data.
  norm: dict


def resolve_dtype(dtype: str | None) -> str:
  """'auto' -> bfloat16 on GPU/TPU (the paper's nets train fine in it, with
  float32 params and logits), float32 on CPU (XLA:CPU has no fast bf16)."""
  if dtype in (None, 'auto'):
    return 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  return dtype


def create_model(config: ml_collections.ConfigDict) -> models.ResNet:
  """The config's model, with the dataset's number of classes."""
  options = {k: v for k, v in config.model_options.items() if v is not None}
  options['dtype'] = resolve_dtype(options.get('dtype'))
  options.setdefault('num_classes', data_lib.DATASETS[config.input.dataset].num_classes)
  return models.create_model(config.model, **options)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The lr by step before plateau decays: base lr (scaled to the batch if
  asked) divided by 1/decay_factor at each boundary of a 'piecewise' schedule."""
  s = config.schedule
  base_lr = config_lib.scaled_lr(config)
  if s.kind != 'piecewise':
    return optax.constant_schedule(base_lr)
  return optax.piecewise_constant_schedule(
      base_lr, {int(b): s.decay_factor for b in s.boundaries})


def plateau_rule(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """optax's reduce-on-plateau, stepped once per held-out evaluation.

  It runs on the host's schedule (after each evaluation), not inside the
  optimizer chain, where it would see a value at every step.
  """
  s = config.schedule
  return optax.contrib.reduce_on_plateau(
      factor=s.decay_factor, patience=s.plateau_patience, rtol=s.plateau_rtol,
      cooldown=s.plateau_cooldown, min_scale=s.decay_factor ** s.plateau_max_decays)


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
  """A 1-D mesh with one `data` axis over all (or the given) devices.

  `jax.make_mesh` orders the devices by the physical topology (TPU torus,
  hosts), so neighbours on the axis are neighbours on the interconnect. Auto
  axes: the step is one GSPMD program, shardings given at its boundary.
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,),
                       devices=devices)


def _init_variables(model, image_shape, rng):
  variables = model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  return variables['params'], variables.get('batch_stats', {})


def initial_state(config, model, optimizer, image_shape, norm) -> TrainState:
  """A fresh train state (call under jit with `out_shardings`)."""
  rng = jax.random.key(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  params, batch_stats = _init_variables(model, image_shape, init_rng)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=optimizer.init(params), rng=state_rng,
      warmup_active=jnp.asarray(config.schedule.warmup_lr > 0),
      train_error_ema=jnp.asarray(1.0 - 1.0 / model.num_classes, jnp.float32),
      plateau=plateau_rule(config).init(params),
      norm=jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), norm))


def abstract_variables(model) -> dict:
  """Shapes of the model's {'params', 'batch_stats'} (any input size gives
  the same: the nets are fully convolutional up to the global pool)."""
  params, batch_stats = jax.eval_shape(
      functools.partial(_init_variables, model, (64, 64, 3)), jax.random.key(0))
  return {'params': params, 'batch_stats': batch_stats}


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state: TrainState, batch, *, model, optimizer, config, dataset):
  """One SGD step on a global batch; returns the new state and scalar metrics."""
  s = config.schedule
  rng = jax.random.fold_in(state.rng, state.step)
  images = dataset.preprocess_train(rng, batch['image'], state.norm, config)
  labels = batch['label']

  def loss_fn(params):
    logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                  images, train=True, mutable=['batch_stats'])
    return cross_entropy(logits, labels).mean(), (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  error = jnp.mean(jnp.argmax(logits, -1) != labels)

  schedule_lr = learning_rate_schedule(config)(state.step) * state.plateau.scale
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
  metrics = {'train_loss': loss, 'train_error': error, 'learning_rate': lr,
             'grad_norm': optax.global_norm(grads)}
  return new_state, metrics


def train_steps(state: TrainState, batches, resident, *, steps: int, **step_kwargs):
  """`steps` train steps in one call; `batches` are stacked on a leading axis.

  `resident` holds the device-resident training split (empty if the batches
  carry their images); a batch of example indices is gathered from it on the
  device. With steps=1 this is `train_step` itself (no leading axis, no scan);
  otherwise the metrics come back stacked, one entry per step.
  """
  def one_step(state, batch):
    return train_step(state, data_lib.gather_resident(batch, resident), **step_kwargs)

  if steps == 1:
    return one_step(state, batches)
  with models.step_loop():  # Keeps XLA:CPU's convolution gradients fast in the loop.
    return jax.lax.scan(one_step, state, batches)


def plateau_step(state: TrainState, holdout_error, *, config) -> TrainState:
  """Feeds one held-out error to the plateau rule (a no-op for 'piecewise')."""
  if config.schedule.kind != 'plateau':
    return state
  _, plateau = plateau_rule(config).update({}, state.plateau, value=holdout_error)
  return state.replace(plateau=plateau)


@dataclasses.dataclass
class Trainer:
  """The compiled functions of one experiment, and the shardings they use."""
  config: ml_collections.ConfigDict
  model: models.ResNet
  mesh: Mesh
  dataset: data_lib.Dataset
  # Derived from the above in __post_init__.
  image_shape: tuple = dataclasses.field(init=False)
  optimizer: optax.GradientTransformation = dataclasses.field(init=False)
  steps_per_dispatch: int = dataclasses.field(init=False)
  state_sharding: Any = dataclasses.field(init=False)
  # The train step's input: sharded over `data` on the batch axis (the
  # second axis when K > 1 batches are stacked per call).
  batch_sharding: NamedSharding = dataclasses.field(init=False)
  replicated: NamedSharding = dataclasses.field(init=False)
  abstract_state: TrainState = dataclasses.field(init=False)
  init_fn: Any = dataclasses.field(init=False)
  train_fn: Any = dataclasses.field(init=False)
  plateau_fn: Any = dataclasses.field(init=False)

  def __post_init__(self):
    self.image_shape = tuple(self.dataset.image_shape)
    self.steps_per_dispatch = self.config.get('steps_per_dispatch', 1)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(
        self.mesh, P('data') if self.steps_per_dispatch == 1 else P(None, 'data'))
    dummy_params = jax.eval_shape(
        lambda: self.model.init(jax.random.key(0), jnp.zeros((1,) + self.image_shape),
                                train=False))['params']
    self.optimizer = create_optimizer(self.config, dummy_params)
    init = functools.partial(initial_state, self.config, self.model, self.optimizer,
                             self.image_shape)
    norm = {k: jax.ShapeDtypeStruct(s, jnp.float32)
            for k, s in self.dataset.normalization_shapes().items()}
    self.abstract_state = jax.eval_shape(init, norm)
    self.state_sharding = jax.tree.map(lambda _: self.replicated, self.abstract_state)
    self.init_fn = jax.jit(init, in_shardings=self.replicated,
                           out_shardings=self.state_sharding)
    self.train_fn = jax.jit(
        functools.partial(train_steps, steps=self.steps_per_dispatch, model=self.model,
                          optimizer=self.optimizer, config=self.config,
                          dataset=self.dataset),
        in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
        out_shardings=(self.state_sharding, self.replicated),
        donate_argnums=(0,))
    self.plateau_fn = jax.jit(functools.partial(plateau_step, config=self.config),
                              in_shardings=(self.state_sharding, self.replicated),
                              out_shardings=self.state_sharding, donate_argnums=(0,))

  def batch_spec(self, batch_size: int, resident: bool = False):
    """Abstract input of one dispatch (K stacked global batches, or one), for
    ahead-of-time compilation; with `resident`, batches of example indices."""
    lead = (self.steps_per_dispatch,) if self.steps_per_dispatch > 1 else ()
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(lead + shape, dtype,
                                                     sharding=self.batch_sharding)
    if resident:
      return {'index': spec((batch_size,), jnp.int32)}
    return {'image': spec((batch_size,) + self.image_shape, jnp.uint8),
            'label': spec((batch_size,), jnp.int32)}

  def sharded_abstract_state(self):
    """`abstract_state` with its shardings: the target of a restore."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_sharding)

  def compile_train(self, batch_size: int, resident=None):
    """Compiles the train step (K steps if steps_per_dispatch=K) ahead of
    time; returns it, called as `step(state, batches, resident)`."""
    resident = resident or {}
    return self.train_fn.lower(self.sharded_abstract_state(),
                               self.batch_spec(batch_size, bool(resident)),
                               resident).compile()

  def to_global(self, local_batch):
    """Per-process numpy input of one dispatch -> global `jax.Array`s, the
    batch axis sharded over `data`."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x),
        local_batch)

  def put_resident(self, arrays: dict) -> dict:
    """Host arrays (the same in every process) -> replicated device arrays."""
    return {k: jax.make_array_from_callback(v.shape, self.replicated, lambda i, v=v: v[i])
            for k, v in arrays.items()}


def _check_finite(metrics: dict, step: int, last_saved: int | None):
  """Raises at the first step whose loss or gradient is not finite."""
  bad = {k: float(metrics[k]) for k in ('train_loss', 'grad_norm')
         if not np.isfinite(metrics[k])}
  if bad:
    kept = (f'the last checkpoint (step {last_saved}) was kept' if last_saved is not None
            else 'no checkpoint was saved')
    raise errors.DivergedError(
        f'non-finite {", ".join(f"{k}={v}" for k, v in bad.items())} at step {step}; '
        f'training stopped there and {kept}. Lower --config.schedule.base_lr or '
        'use a warm-up (--config.schedule.warmup_lr), then resume.')


def _per_step(metrics: dict, steps: int) -> list[dict]:
  """One dispatch's metrics (stacked if it ran several steps) -> one dict per step."""
  if steps == 1:
    return [metrics]
  return [{k: v[i] for k, v in metrics.items()} for i in range(steps)]


def _summarize(window) -> dict:
  """Means over the logging interval; the learning rate as it is now."""
  out = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
  out['learning_rate'] = float(window[-1]['learning_rate'])
  return out


def prepare_workdir(workdir):
  """Creates `workdir` and checks that every process can write into it."""
  path = checkpointing.workdir_path(workdir)
  probe = path / f'.write_test.{jax.process_index()}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise errors.WorkdirError(
        f'cannot write into --workdir={workdir} ({type(e).__name__}: {e.strerror or e}); '
        'choose a writable directory.') from e


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       data=None) -> dict:
  """Trains the config's model, resuming from `workdir` if it holds a checkpoint.

  Args:
    config: an experiment config (see `config_lib.cifar10`, `config_lib.imagenet`).
    workdir: where checkpoints, `metrics.jsonl`, TensorBoard files,
      `config.json` and `eval.json` go (local, or `gs://...`).
    data: optional pre-loaded CIFAR `(train_split, {name: eval_split})` of
      `cifar_input.ArraySplit`s (tests, notebooks); None reads
      `config.input.dataset`.

  Returns:
    The last evaluation's metrics, e.g. {'test_error': ..., 'test_loss': ...}
    ({} if the workdir's run had already finished).
  """
  config_lib.validate(config, jax.device_count(), jax.process_count())
  if data is None:
    data_lib.check_dataset(config.input.dataset, config.input.data_dir)
  prepare_workdir(workdir)
  dataset = data_lib.create(config, preloaded=data)
  with checkpointing.manager(workdir, config.keep_checkpoints) as manager:
    return _train(config, workdir, dataset, manager)


def _log(message: str):
  if jax.process_index() == 0:
    print(message, flush=True)


def _train(config, workdir, dataset, manager) -> dict:
  """`train_and_evaluate` once the config is checked and the manager open."""
  order = checkpointing.data_order(config, jax.process_count(), dataset.num_workers)
  total = config.schedule.total_steps
  model = create_model(config)
  trainer = Trainer(config, model, make_mesh(), dataset)
  restored = checkpointing.restore_latest(manager, config, order,
                                          trainer.sharded_abstract_state())
  if restored is not None and restored[0] >= total:
    _log(f'{workdir} already holds step {restored[0]} (total_steps={total}): training '
         'is finished. Score it with --mode=evaluate, or raise '
         '--config.schedule.total_steps to train further.')
    return {}

  per_dispatch = trainer.steps_per_dispatch
  if restored is not None and restored[0] % per_dispatch:
    raise errors.ConfigError(
        f'{workdir} holds step {restored[0]}, not a multiple of steps_per_dispatch='
        f'{per_dispatch}; resume with a --config.steps_per_dispatch that divides '
        f'{restored[0]} (e.g. 1), then raise it at a later checkpoint.')
  local_batch = config.input.batch_size // jax.process_count()
  host_batches = dataset.train_batches(local_batch, config.seed, jax.process_index(),
                                       jax.process_count())
  if per_dispatch > 1:
    # K batches stacked per call. Grain's position stays counted in single
    # batches, so a checkpoint resumes under any K that divides its step.
    host_batches = host_batches.batch(per_dispatch)
  # Host batches -> global arrays on Grain's prefetch thread, ahead of the step.
  batches = data_lib.prefetch(host_batches, trainer.to_global)
  if restored is not None:
    start, state, position = restored
    batches.set_state(position)
    _log(f'Resumed from step {start} in {workdir}')
  else:
    start = 0
    norm = jax.device_put(dataset.normalization(), trainer.replicated)
    state = trainer.init_fn(norm)

  resident = trainer.put_resident(dataset.resident_arrays())
  t0 = time.time()
  compiled_step = trainer.compile_train(config.input.batch_size, resident)
  compile_seconds = time.time() - t0
  memory = compiled_step.memory_analysis()
  if memory is not None:
    _log(f'Compiled train step in {compile_seconds:.1f}s; temp memory '
         f'{getattr(memory, "temp_size_in_bytes", 0) / 2**20:.1f} MiB per device')

  scorer = evaluation.Scorer(model, dataset, trainer.mesh)
  writer = metric_writers.MetricWriter(workdir, total)
  stop_at = min(total, config.stop_after_steps or total)
  step = start
  last_eval = {}
  last_saved = start if restored is not None else None

  def run_eval(step):
    nonlocal state
    results = {}
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    for split in dataset.eval_splits():
      out = evaluation.evaluate_protocol('center', scorer, variables, state.norm,
                                         dataset, split, config)
      results[f'{split}_error'] = out['top1_error']
      results[f'{split}_top5_error'] = out['top5_error']
      results[f'{split}_loss'] = out['loss']
    if data_lib.HOLDOUT in dataset.eval_splits():
      state = trainer.plateau_fn(state, jax.device_put(
          np.float32(results[f'{data_lib.HOLDOUT}_error']), trainer.replicated))
      results['lr_scale'] = float(jax.device_get(state.plateau.scale))
    writer.write(step, results)
    writer.progress(step, results, None)
    return results

  # (step, metrics) dispatched but not yet checked; the finished ones' metrics.
  in_flight, window = collections.deque(), []
  tick, tick_step = time.time(), step

  def finish(keep: int):
    """Waits for all but the last `keep` dispatches; checks each step's loss."""
    while len(in_flight) > keep:
      done, metrics = in_flight.popleft()
      for i, one in enumerate(_per_step(jax.device_get(metrics), per_dispatch)):
        _check_finite(one, done - per_dispatch + 1 + i, last_saved)
        window.append(one)

  stopped, config_recorded = False, False
  try:
    with distributed.StopRequest() as stop_request:
      while step < stop_at:
        state, metrics = compiled_step(state, next(batches), resident)
        step += per_dispatch
        in_flight.append((step, metrics))
        finish(keep=1)  # Bounded run-ahead: one dispatch runs while the last is checked.
        stopped = stop_request.reached(step)
        is_last = step == stop_at
        log_now = step % config.log_every_steps == 0 or is_last
        eval_now = step % config.eval_every_steps == 0 or step == total
        ckpt_now = step % config.checkpoint_every_steps == 0 or is_last or stopped
        if log_now or eval_now or ckpt_now:
          finish(keep=0)  # Nothing is logged or saved before its loss is checked.
        if log_now:
          seconds_per_step = (time.time() - tick) / (step - tick_step)
          scalars = _summarize(window)
          scalars['warmup_active'] = float(jax.device_get(state.warmup_active))
          scalars['step_time_ms'] = 1000 * seconds_per_step
          scalars['images_per_sec'] = config.input.batch_size / seconds_per_step
          writer.write(step, scalars)
          writer.progress(step, scalars, seconds_per_step)
          window, tick, tick_step = [], time.time(), step
        if eval_now:
          last_eval = run_eval(step)
        if ckpt_now:
          checkpointing.save(manager, step, state, batches.get_state(), config, order)
          if not config_recorded:  # config.json: only a config that trained.
            checkpointing.record_config(workdir, config, start)
            config_recorded = True
          last_saved = step
        if eval_now or ckpt_now:  # Keep eval and checkpoint time out of the step timing.
          tick, tick_step = time.time(), step
        if stopped:
          name = stop_request.signal_name or 'a stop request in another process'
          _log(f'Stopped on {name}: saved a checkpoint at step {step}. Run the same '
               'command again to resume.')
          break
      if step == total and not stopped:
        manager.wait_until_finished()
        split = dataset.info.eval_split
        variables = {'params': state.params, 'batch_stats': state.batch_stats}
        for protocol in config.eval.final_protocols:
          if protocol == 'center' and f'{split}_error' in last_eval:
            result = {'split': split, 'top1_error': last_eval[f'{split}_error'],
                      'top5_error': last_eval[f'{split}_top5_error'],
                      'loss': last_eval[f'{split}_loss'],
                      'count': dataset.num_examples(split)}
          else:
            result = evaluation.evaluate_protocol(protocol, scorer, variables, state.norm,
                                                  dataset, split, config)
          evaluation.record(workdir, config, protocol, result, step)
  finally:
    batches.close()
    manager.wait_until_finished()
    writer.close()
  return last_eval


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, *, data=None) -> dict:
  """`--mode=evaluate`: the config's protocol on the workdir's latest checkpoint."""
  return evaluation.evaluate_workdir(config, workdir, preloaded=data)
