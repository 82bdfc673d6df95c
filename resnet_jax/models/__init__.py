"""The networks of the paper (`resnet`), their CPU convolution path
(`cpu_conv`), their complexity counts (`complexity`) and the conversion
between their scanned and per-block variable layouts (`scan_layout`)."""

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
  check_options,
  create_model,
  feature_shapes,
  init_variables,
  list_models,
  zero_pad_shortcut,
)
from resnet_jax.models.scan_layout import is_scanned, rescan, unscan

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
  'check_options',
  'create_model',
  'feature_shapes',
  'init_variables',
  'is_scanned',
  'list_models',
  'rescan',
  'unscan',
  'zero_pad_shortcut',
]
