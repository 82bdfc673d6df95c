"""The optimizer a config asks for: the paper's SGD, Nesterov, LARS or AdamW.

Every kind keeps the weight-decay mask (`optimizer.exclude_bn_and_bias`) and
the frozen parameters of `config.freeze` (no update, no decay, no state), and
takes its learning rate as an injected hyperparameter that the train step
sets each step (the paper's warm-up rule depends on the training error).
"""

import re

import flax.traverse_util
import jax
import ml_collections
import optax

from resnet_jax import config_validation, errors


def weight_decay_mask(params, exclude_bn_and_bias: bool):
  """True for the parameters that get weight decay.

  Names, not ranks, decide: scanned stages stack BN scales into 2-D arrays.
  """
  if not exclude_bn_and_bias:
    return jax.tree.map(lambda _: True, params)
  return jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params
  )


def frozen_labels(params, pattern: str):
  """'frozen' for the parameters whose name ('stage1_block1/conv1/kernel')
  matches `pattern` (re.search), 'trained' for the others."""
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(
    lambda path, _: 'frozen' if regex.search('/'.join(k.key for k in path)) else 'trained', params
  )


def _update_rule(o, mask, learning_rate, momentum, weight_decay) -> optax.GradientTransformation:
  """The unfrozen parameters' update for `optimizer.kind` (o: config.optimizer)."""
  kind = o.get('kind', 'sgd')
  if kind in ('sgd', 'nesterov'):
    # L2 added to the gradient before momentum, as in Caffe/Torch (not decoupled).
    return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.sgd(learning_rate, momentum=momentum, nesterov=kind == 'nesterov'),
    )
  if kind == 'lars':
    # What is spared decay (BN, biases) is spared the trust ratio too, as in
    # the large-batch recipes that use LARS.
    return optax.lars(
      learning_rate,
      weight_decay=weight_decay,
      weight_decay_mask=mask,
      trust_coefficient=o.lars_trust_coefficient,
      trust_ratio_mask=mask,
      momentum=momentum,
    )
  if kind == 'adamw':  # Decoupled decay, scaled by the lr (optax's convention).
    adam = {'b1': o.adam_b1, 'b2': o.adam_b2, 'eps': o.adam_eps}
    return optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask, **adam)
  raise errors.ConfigError(
    f'optimizer.kind={kind!r}; set it to one of {config_validation.OPTIMIZERS}'
  )


def create_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """The config's optimizer (`optimizer.kind`, default the paper's SGD with
  momentum and L2 weight decay) for `params`.

  The learning rate, momentum and decay are injected hyperparameters, the
  same for every kind, so that the train step can set the lr. Parameters
  matching `config.freeze` get no update at all (optax `multi_transform` with
  `set_to_zero`: no decay, no momentum buffer).
  """
  mask = weight_decay_mask(params, config.optimizer.exclude_bn_and_bias)
  labels = frozen_labels(params, config.freeze) if config.get('freeze') else None
  if labels is not None:
    names = list(flax.traverse_util.flatten_dict(params, sep='/'))
    if (problem := config_validation.freeze_problem(config.freeze, names)) is not None:
      raise errors.ConfigError(problem)

  @optax.inject_hyperparams
  def optimizer(learning_rate, momentum, weight_decay):
    rule = _update_rule(config.optimizer, mask, learning_rate, momentum, weight_decay)
    if labels is None:
      return rule
    return optax.multi_transform({'trained': rule, 'frozen': optax.set_to_zero()}, labels)

  return optimizer(
    learning_rate=config.schedule.base_lr,
    momentum=config.optimizer.momentum,
    weight_decay=config.optimizer.weight_decay,
  )
