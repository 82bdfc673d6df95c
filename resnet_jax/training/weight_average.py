"""An exponential moving average (EMA) of the weights, as the newer recipes keep.

The average covers the parameters and the BatchNorm statistics (as
torchvision's reference `ExponentialMovingAverage`, whose buffers are
averaged too), so that it is a net of its own, evaluated beside the raw
weights. Every `ema.every_steps` steps (counted after the update):

  ema = decay * ema + (1 - decay) * weights

and until `ema.warmup_steps` the average is the weights themselves (the raw
weights of the first steps move too fast for an average to mean much).
"""

import jax.numpy as jnp
import ml_collections
import optax


def is_on(ema: ml_collections.ConfigDict) -> bool:
  return bool(ema.decay)


def initial(params, batch_stats) -> dict:
  """The average at step 0: the weights themselves."""
  return {'params': params, 'batch_stats': batch_stats}


def decay_at(step, ema: ml_collections.ConfigDict):
  """The decay applied after step `step` (counted from 1): 0 (copy) during the
  warm-up, then `ema.decay` every `every_steps` steps and 1 (keep) in between."""
  decay = jnp.where(step % ema.every_steps == 0, ema.decay, 1.0)
  return jnp.where(step <= ema.warmup_steps, 0.0, decay)


def update(average: dict, params, batch_stats, step, ema: ml_collections.ConfigDict) -> dict:
  """The average after step `step`, of the weights that step produced."""
  weights = {'params': params, 'batch_stats': batch_stats}
  return optax.incremental_update(weights, average, 1.0 - decay_at(step, ema))
