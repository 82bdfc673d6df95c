"""The learning rate by step: the paper's steps, cosine or polynomial decay,
after an optional linear warm-up.

The plateau rule's decays (section 3.4) and the paper's error-driven warm-up
of ResNet-110 (`schedule.warmup_lr`) are applied on top of this by the train
step; they depend on errors, not on the step alone.
"""

import ml_collections
import optax

from resnet_jax import config_lib


def _decay(config: ml_collections.ConfigDict, base_lr: float, warmup: int) -> optax.Schedule:
  """The schedule after warm-up, counted from the warm-up's end."""
  s = config.schedule
  kind = s.kind
  if kind == 'piecewise':
    # Boundaries count from the start of training, warm-up included.
    piecewise = optax.piecewise_constant_schedule(
      base_lr, {int(b): s.decay_factor for b in s.boundaries}
    )
    return piecewise if not warmup else lambda count: piecewise(count + warmup)
  fraction = s.get('end_lr_fraction', 0.0)
  if kind == 'cosine':
    return optax.cosine_decay_schedule(base_lr, s.total_steps - warmup, alpha=fraction)
  if kind == 'polynomial':
    return optax.polynomial_schedule(
      base_lr, base_lr * fraction, s.get('polynomial_power', 2.0), s.total_steps - warmup
    )
  return optax.constant_schedule(base_lr)  # 'plateau': its decays come from the evaluations.


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The lr by step before plateau decays.

  The base lr (scaled to the batch if asked), reached linearly from
  `schedule.warmup_init_lr` (0 by default) over `schedule.warmup_steps` if
  set, then: divided by 1/decay_factor at each
  boundary ('piecewise'), cosine or polynomial decay to
  base lr x end_lr_fraction at total_steps ('cosine', 'polynomial'), or kept
  ('plateau').
  """
  base_lr = config_lib.scaled_lr(config)
  warmup = config.schedule.get('warmup_steps', 0)
  decay = _decay(config, base_lr, warmup)
  if not warmup:
    return decay
  ramp = optax.linear_schedule(config.schedule.get('warmup_init_lr', 0.0), base_lr, warmup)
  return optax.join_schedules([ramp, decay], [warmup])
