"""The networks of the paper (`resnet`), their CPU convolution path
(`cpu_conv`) and their complexity counts (`complexity`)."""

from resnet_jax.models.resnet import (
  MODELS,
  OPTIONS,
  SHORTCUTS,
  BasicBlock,
  BottleneckBlock,
  GroupBatchNorm,
  ResNet,
  Shortcut,
  abstract_variables,
  create_model,
  init_variables,
  zero_pad_shortcut,
)

__all__ = [
  'MODELS',
  'OPTIONS',
  'SHORTCUTS',
  'BasicBlock',
  'BottleneckBlock',
  'GroupBatchNorm',
  'ResNet',
  'Shortcut',
  'abstract_variables',
  'create_model',
  'init_variables',
  'zero_pad_shortcut',
]
