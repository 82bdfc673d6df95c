"""The training loop: data in, compiled steps, logs, evaluations and checkpoints.

The dataset (`data.create(config)`) decides everything per-dataset: host
augmentation, the device-side preprocessing inside the step, normalisation
constants (kept in the state, so they travel in every checkpoint) and the
evaluation views. The step is `training.step`'s; checkpoints are
`checkpointing`'s, the workdir's `config.json` is `workdir_files`'; test
protocols are `evaluation`'s. With K steps per call
(`config.steps_per_dispatch`), logging, evaluation and checkpoints happen at
multiples of K (`config_validation.validate` checks).

Many hosts: every process runs this same loop on its own share of the data
(`distributed.to_global` builds the global batch), saves every checkpoint
together with the others, and stops at the step they agree on
(`distributed.StopRequest`). Only process 0 writes logs and JSON files. The
host waits for step n-1 before dispatching step n+1: never more than one
dispatch runs ahead, so a stop request is honoured within a step or two and a
non-finite loss is caught at its own step.
"""

import collections
import time

import jax
import ml_collections
import numpy as np

from resnet_jax import (
  checkpointing,
  config_validation,
  distributed,
  errors,
  evaluation,
  experiment,
  paths,
  workdir_files,
  workdir_lock,
)
from resnet_jax import data as data_lib
from resnet_jax.training import metric_writers, weight_average
from resnet_jax.training import step as step_lib
from resnet_jax.weights import init_from


def _check_finite(metrics: dict, step: int, last_saved: int | None):
  """Raises at the first step whose loss or gradient is not finite."""
  bad = {k: float(metrics[k]) for k in ('train_loss', 'grad_norm') if not np.isfinite(metrics[k])}
  if bad:
    kept = (
      f'the last checkpoint (step {last_saved}) was kept'
      if last_saved is not None
      else 'no checkpoint was saved'
    )
    raise errors.DivergedError(
      f'non-finite {", ".join(f"{k}={v}" for k, v in bad.items())} at step {step}; '
      f'training stopped there and {kept}. Lower --config.schedule.base_lr or '
      'use a warm-up (--config.schedule.warmup_lr), then resume.'
    )


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, data=None) -> dict:
  """Trains the config's model, resuming from `workdir` if it holds a checkpoint.

  Args:
    config: an experiment config (see `config_lib.cifar10`, `config_lib.imagenet`).
    workdir: where checkpoints, `metrics.jsonl`, TensorBoard files,
      `config.json` and `eval.json` go (local, or `gs://...`).
    data: optional pre-loaded CIFAR `(train_split, {name: eval_split})` of
      `data.cifar.ArraySplit`s (tests, notebooks); None reads
      `config.input.dataset`.

  Returns:
    The last evaluation's metrics, e.g. {'test_error': ..., 'test_loss': ...}
    ({} if the workdir's run had already finished).
  """
  config_validation.validate(config, jax.device_count(), jax.process_count())
  config = experiment.resolved(config)
  if data is None:
    data_lib.check_dataset(config.input)
  dataset = data_lib.create(config, preloaded=data)
  dataset.check_splits()
  init_from.check(config)
  workdir_files.prepare_workdir(workdir)
  with (
    workdir_lock.held(
      workdir, 'training', is_holder=jax.process_index() == 0, agree=distributed.all_true
    ),
    checkpointing.managed(workdir, config.keep_checkpoints) as manager,
  ):
    trainer = step_lib.Trainer(
      config, experiment.model_from_config(config), distributed.make_mesh(), dataset
    )
    order = checkpointing.data_order(config, jax.process_count(), dataset.num_workers)
    restored = checkpointing.restore_latest(
      manager, config, order, trainer.sharded_abstract_state()
    )
    finished = restored is not None and restored[0] >= config.schedule.total_steps
    if finished and not evaluation.has_final_results(workdir, config, restored[0]):
      _log(
        f'{workdir} holds the last step {restored[0]} without its final evaluation '
        '(stopped during it): running it now.'
      )
      return _Run(config, workdir, trainer, manager, order, restored).evaluate_final()
    if finished:
      _log(
        f'{workdir} already holds step {restored[0]} (total_steps='
        f'{config.schedule.total_steps}): training is finished. Score it with '
        '--mode=evaluate, or raise --config.schedule.total_steps to train further.'
      )
      return {}
    checkpointing.check_resumable_under(restored, trainer.steps_per_dispatch, workdir)
    return _Run(config, workdir, trainer, manager, order, restored).train()


# Progress lines come at these steps too (the first dispatches that reach
# them), before the first `log_every_steps`: a user sees within seconds that
# the run trains, at what speed, and how long it will take. They are printed
# only: metrics.jsonl keeps one mean per logging interval, the same rows for
# any number of steps per dispatch.
EARLY_PROGRESS_STEPS = (1, 10)
# Metrics of the weights' moving average (`config.ema`) carry this prefix.
EMA_PREFIX = 'ema_'


def _is_early_progress_step(step: int, per_dispatch: int, every: int) -> bool:
  """Whether the dispatch ending at `step` is the first to reach one of
  `EARLY_PROGRESS_STEPS` before the first logging step `every`."""
  return step < every and any(step - per_dispatch < early <= step for early in EARLY_PROGRESS_STEPS)


def _log(message: str):
  if jax.process_index() == 0:
    print(message, flush=True)


class _Run:
  """One training run from its first (or resumed) step to its last."""

  def __init__(self, config, workdir, trainer, manager, order, restored):
    self.config, self.workdir, self.trainer = config, workdir, trainer
    self.manager, self.order = manager, order
    self.dataset = trainer.dataset
    self.per_dispatch = trainer.steps_per_dispatch
    self.total = config.schedule.total_steps
    self.stop_at = min(self.total, config.stop_after_steps or self.total)
    self.batches = self._open_batches()
    if restored is not None:
      self.start, self.state, position = restored
      self.batches.set_state(position)
      _log(f'Resumed from step {self.start} in {workdir}')
    else:
      self.start = 0
      norm = jax.device_put(self.dataset.normalization(), trainer.replicated)
      self.state = trainer.init_fn(norm)
      if config.get('init_from'):
        self.state = init_from.initialize(self.state, config, trainer.replicated)
        if self.state.ema is not None:  # The average starts from the loaded weights.
          self.state = self.state.replace(
            ema=weight_average.initial(self.state.params, self.state.batch_stats)
          )
    self.step = self.start
    # The newest save issued, and the one before it: a save runs in the
    # background, one at a time, so the older is committed while it runs.
    self.last_saved = self.start if restored is not None else None
    self.before_last_saved = None
    self.last_eval = {}
    # (step, metrics) dispatched but not yet checked; the checked ones' metrics.
    self.in_flight, self.window = collections.deque(), []
    self.tick, self.tick_step = time.time(), self.step

  def _open_batches(self):
    """Host batches -> global arrays on Grain's prefetch thread, ahead of the step."""
    local_batch = self.config.input.batch_size // jax.process_count()
    host_batches = self.dataset.train_batches(
      local_batch, self.config.seed, jax.process_index(), jax.process_count()
    )
    if self.per_dispatch > 1:
      # K batches stacked per call. Grain's position stays counted in single
      # batches, so a checkpoint resumes under any K that divides its step.
      host_batches = host_batches.batch(self.per_dispatch)
    return data_lib.core.prefetch(host_batches, self.trainer.to_global)

  def _compile(self):
    resident = self.trainer.put_resident(self.dataset.resident_arrays())
    t0 = time.time()
    compiled = self.trainer.compile_train(self.config.input.batch_size, resident)
    memory = compiled.memory_analysis()
    if memory is not None:
      # Unrolled stages compile more slowly: say why (training.step.trains_per_block).
      how = ' (stages one block at a time, faster on CPU)' if self.trainer.per_block_stages else ''
      _log(
        f'Compiled train step{how} in {time.time() - t0:.1f}s; temp memory '
        f'{getattr(memory, "temp_size_in_bytes", 0) / 2**20:.1f} MiB per device'
      )
    return compiled, resident

  def train(self) -> dict:
    compiled, resident = self._compile()
    self.scorer = evaluation.Scorer(self.trainer.model, self.dataset, self.trainer.mesh)
    self.writer = None
    try:
      self.writer = metric_writers.MetricWriter(self.workdir, self.total)
      with errors.writing(paths.workdir_path(self.workdir) / workdir_files.CONFIG_FILE):
        workdir_files.record_config(self.workdir, self.config, self.start)
      self._train_steps(compiled, resident)
    except errors.WriteError as e:
      raise self._write_failed(e) from e
    finally:
      self.batches.close()
      if self.writer is not None:
        self.writer.close()
    return self.last_eval

  def _train_steps(self, compiled, resident):
    with distributed.StopRequest(kept=self._kept) as stop_request:
      stopped = False
      while self.step < self.stop_at and not stopped:
        self.state, metrics = compiled(self.state, next(self.batches), resident)
        self.step += self.per_dispatch
        self.in_flight.append((self.step, metrics))
        self._finish(keep=1)  # Bounded run-ahead: one dispatch runs while the last is checked.
        checkpointing.confirm_saves(self.manager, self.last_saved, self.step)
        stopped = stop_request.reached(self.step)
        self._after_step(stopped)
      if stopped:
        name = stop_request.signal_name or 'a stop request in another process'
        _log(
          f'Stopped on {name}: saved a checkpoint at step {self.step}. Run the same '
          'command again to resume.'
        )
      elif self.step == self.total:
        self._final_evaluation()
    checkpointing.confirm_saves(self.manager, self.last_saved, self.step, wait=True)

  def _committed(self) -> int | None:
    """The newest checkpoint known to be whole on storage."""
    return self.before_last_saved if self.manager.is_saving_in_progress() else self.last_saved

  def _kept(self) -> str:
    step = self._committed()
    if step is None:
      return 'No checkpoint was saved: run the same command to start again.'
    return f'The last good checkpoint is step {step}: run the same command to resume from it.'

  def _write_failed(self, e: errors.WriteError) -> errors.WriteError:
    """`e` with where training stopped and what it kept (after the save in
    flight, if any, is whole: a failed one reports itself instead)."""
    checkpointing.confirm_saves(self.manager, self.last_saved, self.step, wait=True)
    fix = 'fix the storage (free space, permissions), then'
    kept = (
      f'checkpoint {self.last_saved} is intact: {fix} run the same command to resume from it'
      if self.last_saved is not None
      else f'no checkpoint was saved: {fix} start again'
    )
    kept = kept[0].upper() + kept[1:]
    return errors.WriteError(f'{e}; training stopped at step {self.step}. {kept}.')

  def evaluate_final(self) -> dict:
    """Only the final evaluation, of the restored last step."""
    self.scorer = evaluation.Scorer(self.trainer.model, self.dataset, self.trainer.mesh)
    try:
      self._final_evaluation()
    finally:
      self.batches.close()
    return self.last_eval

  def _finish(self, keep: int):
    """Waits for all but the last `keep` dispatches; checks each step's loss."""
    while len(self.in_flight) > keep:
      done, metrics = self.in_flight.popleft()
      for i, one in enumerate(_per_step(jax.device_get(metrics), self.per_dispatch)):
        _check_finite(one, done - self.per_dispatch + 1 + i, self.last_saved)
        self.window.append(one)

  def _after_step(self, stopped: bool):
    """Logs, saves and evaluates at the steps the config asks for.

    Every evaluation step is saved, before the evaluation: one that fails
    (an unreadable test image) loses no training. Only the held-out
    evaluation, whose error steers the learning rate (the plateau rule),
    comes before the save, so that the checkpoint holds its effect.
    """
    config, step = self.config, self.step
    is_last = step == self.stop_at
    log_now = step % config.log_every_steps == 0 or is_last
    early = not log_now and _is_early_progress_step(step, self.per_dispatch, config.log_every_steps)
    eval_now = step % config.eval_every_steps == 0 or step == self.total
    ckpt_now = step % config.checkpoint_every_steps == 0 or is_last or stopped or eval_now
    if log_now or early or eval_now or ckpt_now:
      self._finish(keep=0)  # Nothing is logged or saved before its loss is checked.
    if log_now:
      self._log_window()
    elif early:
      self.writer.progress(step, *self._window_so_far())
    steering = self._evaluate_steering() if eval_now else {}
    if ckpt_now:
      self._save()
    if eval_now:
      self._evaluate(steering)
    if eval_now or ckpt_now:  # Keep eval and checkpoint time out of the step timing.
      self.tick, self.tick_step = time.time(), step

  def _window_so_far(self) -> tuple[dict, float]:
    """(the interval's means and speed so far, seconds per step)."""
    seconds_per_step = (time.time() - self.tick) / (self.step - self.tick_step)
    scalars = _summarize(self.window)
    scalars['warmup_active'] = float(jax.device_get(self.state.warmup_active))
    scalars['step_time_ms'] = 1000 * seconds_per_step
    scalars['images_per_sec'] = self.config.input.batch_size / seconds_per_step
    return scalars, seconds_per_step

  def _log_window(self):
    scalars, seconds_per_step = self._window_so_far()
    self.writer.write(self.step, scalars)
    self.writer.progress(self.step, scalars, seconds_per_step)
    self.window, self.tick, self.tick_step = [], time.time(), self.step

  def _variables(self) -> dict:
    return {'params': self.state.params, 'batch_stats': self.state.batch_stats}

  def _evaluate_steering(self) -> dict:
    """The held-out split's results, applied to the plateau rule; {} without one."""
    if data_lib.HOLDOUT not in self.dataset.eval_splits():
      return {}
    results = self._evaluate_splits([data_lib.HOLDOUT])
    holdout_error = np.float32(results[f'{data_lib.HOLDOUT}_error'])
    self.state = self.trainer.plateau_fn(
      self.state, jax.device_put(holdout_error, self.trainer.replicated)
    )
    results['lr_scale'] = float(jax.device_get(self.state.plateau.scale))
    return results

  def _evaluate_splits(self, splits) -> dict:
    return evaluation.evaluate_splits(
      self.scorer, self._variables(), self.state.norm, self.dataset, self.config, splits
    )

  def _evaluate(self, steering: dict):
    """Every evaluation split but those in `steering` (already scored), and
    every split with the weights' average (as `ema_<split>_error`); logs all."""
    rest = [s for s in self.dataset.eval_splits() if f'{s}_error' not in steering]
    results = {**steering, **self._evaluate_splits(rest)}
    if self.state.ema is not None:
      averaged = evaluation.evaluate_splits(
        self.scorer, self.state.ema, self.state.norm, self.dataset, self.config
      )
      results.update({f'{EMA_PREFIX}{k}': v for k, v in averaged.items()})
    self.writer.write(self.step, results)
    self.writer.progress(self.step, results, None)
    self.last_eval = results

  def _save(self):
    checkpointing.save(
      self.manager,
      self.step,
      self.state,
      self.batches.get_state(),
      self.config,
      self.order,
      self.dataset.info.class_names,
    )
    self.before_last_saved, self.last_saved = self.last_saved, self.step

  def _final_evaluation(self):
    checkpointing.confirm_saves(self.manager, self.last_saved, self.step, wait=True)
    results = evaluation.final_protocols(
      self.scorer, self._variables(), self.state.norm, self.dataset, self.config, self.last_eval
    )
    for protocol, result in results.items():
      evaluation.record(self.workdir, self.config, protocol, result, self.step)
    if self.state.ema is None:
      return
    averaged_eval = {
      k[len(EMA_PREFIX) :]: v for k, v in self.last_eval.items() if k.startswith(EMA_PREFIX)
    }
    results = evaluation.final_protocols(
      self.scorer, self.state.ema, self.state.norm, self.dataset, self.config, averaged_eval
    )
    for protocol, result in results.items():
      result['weights'] = 'ema'
      key = evaluation.ema_key(protocol)
      evaluation.record(self.workdir, self.config, protocol, result, self.step, key)
