"""Every network of He et al. (2016): plain and residual, ImageNet and CIFAR.

One `ResNet` module covers the whole zoo; the named models are presets over it
(see `MODELS` and `create_model`). Layout is NHWC. The model does no input
normalisation: the input pipeline subtracts the per-pixel mean.

Every convolution pads (k-1)//2 on each side at every stride (3x3: 1, 7x7: 3,
1x1: 0), as the paper's Caffe models, the Torch reproductions and torchvision
do (PAPER.md): a stride-2 output i is centred on input 2i, where the option-A
shortcut samples. (nn.Conv's default 'SAME' pads (0, 1) at stride 2, centring
it on 2i+1.) The max pool is 3x3/2 with padding 1. A stride-2 layer maps
H to ceil(H/2).

Stages of identical blocks are run with `nn.scan`, so the compiled graph holds
one block per stage whatever the depth (cifar_resnet1202 compiles in seconds).
Scanned parameters carry a leading `block` axis (`research.activations`
names the recorded responses one entry per layer). On CPU the convolutions
inside scans take gradients written as forward convolutions
(`cpu_conv.conv_general_dilated`); forward and reverse mode both work
everywhere.

In eval mode, an optional `mask` batches images of different sizes padded to
one canvas, with each image's logits those of the image alone (see `ResNet`).
"""

import fnmatch
import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import errors
from resnet_jax.models import cpu_conv

ModuleDef = Any

# He et al. 2015 ("Delving deep into rectifiers"), forward case: zero-mean
# Gaussian with std sqrt(2 / fan_in), fan_in = k * k * c_in (Caffe's "msra").
he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
# The fc layer: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and zero bias, as in
# Torch's nn.Linear default that the Torch reproductions of the paper used.
fc_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')

SHORTCUTS = ('A', 'B', 'C')


class GroupBatchNorm(nn.Module):
  """BatchNorm whose training statistics come from groups of `group_size`.

  Emulates the paper's per-GPU BatchNorm (statistics over each GPU's share of
  the mini-batch) under a global-batch `jax.jit`: in training, examples
  [k*G, (k+1)*G) of the batch are normalised with the mean and (biased)
  variance of their own group, over the group's examples and all spatial
  positions. The result depends only on the batch, not on how it is sharded.
  With the batch sharded over a mesh axis, a group may lie within one device
  (G divides the per-device batch) or span whole consecutive devices (the
  per-device batch divides G): either way XLA exchanges only per-channel
  statistics. A group that straddles part of a device is still computed
  correctly but makes XLA gather activations (`config_validation.validate` refuses
  it). In eval mode the running statistics are used, as in `nn.BatchNorm`.

  Variables are named as in `nn.BatchNorm` (params scale/bias, batch_stats
  mean/var), so checkpoints are interchangeable. The running statistics are
  updated with the mean over groups of the group means and of the group
  (biased) variances: `ra = momentum * ra + (1 - momentum) * mean_k(stat_k)`.
  """

  group_size: int
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
      y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
    else:
      batch = x.shape[0]
      if batch % self.group_size:
        raise ValueError(
          f'batch {batch} is not divisible by bn_group_size '
          f'{self.group_size}; pick a group size that divides '
          'the per-step batch.'
        )
      # Why a separate group axis: under a batch-sharded jit the SPMD
      # partitioner then shards either the group axis (groups within a
      # device: statistics are local) or the within-group axis (groups over
      # d whole devices: it all-reduces the (1, C) sums over replica groups
      # of those d consecutive devices), forward and backward, and never
      # moves activations. So no sharding constraint is needed: the compiled
      # HLO for 8 devices x 2 examples, G=4, has only all-reduces of
      # per-channel vectors over pairs of devices (plus the (C,) means over
      # groups for the running statistics) and no all-gather. A group that
      # straddles part of a device does make it all-gather the activations.
      groups = x.reshape((batch // self.group_size, self.group_size) + x.shape[1:])
      groups = groups.astype(jnp.float32)
      axes = tuple(range(1, groups.ndim - 1))
      mean = groups.mean(axis=axes, keepdims=True)
      var = jnp.square(groups - mean).mean(axis=axes, keepdims=True)
      y = ((groups - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.reshape(
          -1, features
        ).mean(0)
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.reshape(
          -1, features
        ).mean(0)
    y = y * scale + bias
    return y.astype(self.dtype or x.dtype)


def zero_pad_shortcut(x, features: int, strides: int):
  """Option A shortcut: subsample by `strides`, zero-pad the new channels.

  The new channels are appended after the existing ones (the paper says only
  "extra zero entries padded"); no parameters.
  """
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(f'option A cannot shrink {x.shape[-1]} channels to {features}')
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


def mask_at(mask, height_width):
  """The valid region `mask` (B, H, W) at a lower resolution (h, w).

  Every stride-2 layer maps a valid extent n to ceil(n/2), its output i centred
  on input 2i, so each halving of the resolution keeps `mask[:, ::2, ::2]`.
  """
  while mask.shape[1:3] != tuple(height_width):
    if mask.shape[1] < height_width[0] or mask.shape[2] < height_width[1]:
      raise ValueError(f'a mask of shape {mask.shape} does not subsample to {tuple(height_width)}')
    mask = mask[:, ::2, ::2]
  return mask


def _zero_outside(x, mask):
  """Zeroes `x` (B, h, w, C) outside the valid region; no-op if mask is None."""
  if mask is None:
    return x
  # `where`, not a product: the padding may hold anything, inf and nan included.
  return jnp.where(mask_at(mask, x.shape[1:3])[..., None], x, jnp.zeros((), x.dtype))


class Shortcut(nn.Module):
  """The shortcut branch of one block, for options A, B and C."""

  features: int
  strides: int
  option: str
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    changes = self.strides != 1 or x.shape[-1] != self.features
    if self.option == 'C' or (self.option == 'B' and changes):
      x = self.conv(self.features, (1, 1), strides=(self.strides,) * 2, padding=0, name='conv')(x)
      return self.norm(name='bn')(x)
    if self.option == 'A':
      return zero_pad_shortcut(x, self.features, self.strides)
    return x  # option B, same shape: identity


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  shortcut: str | None  # None: a plain block, no shortcut at all.
  zero_init_last_bn: bool = False
  downsample_on_3x3: bool = True  # unused: basic blocks have only 3x3 convs.

  @nn.compact
  def __call__(self, x, mask=None):
    # padding=(k-1)//2 at every stride (module docstring). `mask`: see `ResNet`;
    # only convolutions that read neighbours need zeros outside it.
    y = self.conv(self.features, (3, 3), strides=(self.strides,) * 2, padding=1, name='conv1')(
      _zero_outside(x, mask)
    )
    y = self.norm(name='bn1')(y)
    self.sow('intermediates', 'response1', y)
    y = nn.relu(y)
    y = self.conv(self.features, (3, 3), padding=1, name='conv2')(_zero_outside(y, mask))
    last_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = self.norm(name='bn2', scale_init=last_init)(y)
    self.sow('intermediates', 'response2', y)
    if self.shortcut is not None:
      y = y + Shortcut(
        self.features, self.strides, self.shortcut, self.conv, self.norm, name='shortcut'
      )(x)
    return nn.relu(y)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand to 4x `features` (ResNet-50/101/152)."""

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  shortcut: str | None
  zero_init_last_bn: bool = False
  # False: stride on the first 1x1, as in the paper's released models (what
  # Table 1 counts). True: stride on the 3x3 ("ResNet v1.5", torchvision).
  downsample_on_3x3: bool = False

  @nn.compact
  def __call__(self, x, mask=None):
    s1, s3 = (1, self.strides) if self.downsample_on_3x3 else (self.strides, 1)
    y = self.conv(self.features, (1, 1), strides=(s1, s1), padding=0, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), strides=(s3, s3), padding=1, name='conv2')(
      _zero_outside(y, mask)
    )
    y = self.norm(name='bn2')(y)
    self.sow('intermediates', 'response2', y)
    y = nn.relu(y)
    y = self.conv(4 * self.features, (1, 1), padding=0, name='conv3')(y)
    last_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = self.norm(name='bn3', scale_init=last_init)(y)
    if self.shortcut is not None:
      y = y + Shortcut(
        4 * self.features, self.strides, self.shortcut, self.conv, self.norm, name='shortcut'
      )(x)
    return nn.relu(y)


def _scannable(block_cls):
  """A subclass of `block_cls` with the (carry, mask) -> (carry, y) scan signature."""

  class Scanned(block_cls):
    def __call__(self, x, mask):
      return super().__call__(x, mask), None

  Scanned.__name__ = f'Scanned{block_cls.__name__}'
  return Scanned


_SCANNABLE = {cls: _scannable(cls) for cls in (BasicBlock, BottleneckBlock)}


class ResNet(nn.Module):
  """Residual or plain network of He et al. (2016).

  Called as `model.apply(variables, x, train, mask=None, features=False)`,
  x (B, H, W, 3); returns the logits (B, num_classes), float32.
  `mask` (B, H, W), bool or 0/1, batches images of different sizes in eval
  mode (the paper's fully-convolutional multi-scale test): image i fills the
  top-left h_i x w_i of the canvas, the rest is padding of any value, and its
  logits are those of the h_i x w_i image alone. Activations outside the mask
  are zeroed before every convolution that reads neighbours and before the
  max pool, and the global average pool is a masked mean; without a mask
  nothing of this is computed. With train=True a mask raises ValueError.

  With `features=True` it returns a dict instead of the logits, for backbone
  use (detection, segmentation, linear probes), with the same variables:
    'stage1' .. 'stageN': each stage's output (B, h, w, C), NHWC, in the
      compute dtype. ImageNet nets: stage1..stage4 are the C2..C5 maps at
      strides 4, 8, 16, 32; CIFAR nets: stage1..stage3 at strides 1, 2, 4.
      With a mask they are zero outside the (subsampled) valid region.
    'pooled': the global-average-pooled last stage (B, C), the fc layer's
      input, float32 (a masked mean with a mask).
    'logits': (B, num_classes), float32, as with `features=False`.
  `feature_shapes` gives their shapes without computing anything.

  Attributes:
    stage_sizes: blocks per stage.
    block_cls: `BasicBlock` or `BottleneckBlock`.
    num_filters: filters of the first stage; doubled at each later stage.
    stem: 'imagenet' (7x7/2 conv, 3x3/2 max pool) or 'cifar' (one 3x3 conv).
    shortcut: 'A', 'B' or 'C'; ignored when `plain`.
    plain: no shortcuts at all (the paper's plain nets).
    num_classes: outputs of the final fc layer.
    dtype: compute dtype; params stay float32, logits are float32.
    bn_momentum, bn_epsilon: BatchNorm running-average decay and epsilon.
    bn_group_size: if set, BatchNorm statistics in training are computed over
      groups of this many consecutive examples (the paper's per-GPU BN, e.g.
      64 on CIFAR, 32 on ImageNet, on any number of devices); it must divide
      the batch. With a sharded batch a group may lie within a device or span
      whole devices (see `GroupBatchNorm`). None: the whole batch that the
      step sees.
    zero_init_last_bn: zero-init the last BN scale of each residual branch
      (not in the paper; off by default).
    downsample_on_3x3: bottleneck stride on the 3x3 ("v1.5") instead of the
      first 1x1 (the paper's models).
    scan_blocks: run each stage's identical blocks with `nn.scan`.
    in_step_loop: the model is traced inside a loop of train steps (K steps
      per call); on CPU its strided convolutions then take the path whose
      gradients stay fast in a while loop (`cpu_conv`). Same values; set by
      the train step, not a config option.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_filters: int = 64
  stem: str = 'imagenet'
  shortcut: str = 'B'
  plain: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_group_size: int | None = None
  zero_init_last_bn: bool = False
  downsample_on_3x3: bool = False
  scan_blocks: bool = True
  in_step_loop: bool = False

  @nn.compact
  def __call__(self, x, train: bool, mask=None, features: bool = False):
    mask = _checked_mask(mask, x.shape, train)
    conv, norm = self._conv(), self._norm(train)
    x = self._stem(_zero_outside(x.astype(self.dtype), mask), mask, conv, norm)
    stage_outputs = {}
    for i, num_blocks in enumerate(self.stage_sizes):
      x = self._stage(i, num_blocks, x, mask, conv, norm)
      if features:
        # Zeroed outside the mask: the padding's values (inf, nan included)
        # would otherwise reach a head that reads them.
        stage_outputs[f'stage{i + 1}'] = _zero_outside(x, mask)
    pooled = self._pool(x, mask)
    logits = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=fc_kernel_init,
      name='fc',
    )(pooled)
    if features:
      return {
        **stage_outputs,
        'pooled': pooled.astype(jnp.float32),
        'logits': logits.astype(jnp.float32),
      }
    return logits.astype(jnp.float32)

  # The helpers below are `nn.nowrap`: plain code run inside `__call__`, so the
  # submodules they create are `__call__`'s own, under the names given here
  # (which checkpoints and the torchvision conversion rely on), and no method
  # call of theirs shows in summaries or captured intermediates.

  @nn.nowrap
  def _conv(self):
    """The convolution factory: no bias, He init, float32 params."""
    return functools.partial(
      nn.Conv,
      use_bias=False,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=he_normal,
      conv_general_dilated=functools.partial(
        cpu_conv.conv_general_dilated, strided_as_stride1=self.in_step_loop
      ),
    )

  @nn.nowrap
  def _norm(self, train: bool):
    """The BatchNorm factory: over the whole batch, or over `bn_group_size` groups."""
    if self.bn_group_size:
      return functools.partial(
        GroupBatchNorm,
        group_size=self.bn_group_size,
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
      )
    return functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      param_dtype=jnp.float32,
    )

  @nn.nowrap
  def _stem(self, x, mask, conv, norm):
    """`conv_init` and `bn_init`, then (ImageNet) the max pool."""
    if self.stem == 'imagenet':
      x = conv(self.num_filters, (7, 7), strides=(2, 2), padding=3, name='conv_init')(x)
      x = nn.relu(norm(name='bn_init')(x))
      # Zeros, not the padding's -inf, outside the mask: the inputs are
      # post-ReLU (>= 0) and every window holds a valid pixel, so they never win.
      return nn.max_pool(_zero_outside(x, mask), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if self.stem == 'cifar':
      x = conv(self.num_filters, (3, 3), padding=1, name='conv_init')(x)
      return nn.relu(norm(name='bn_init')(x))
    raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")

  @nn.nowrap
  def _stage(self, i: int, num_blocks: int, x, mask, conv, norm):
    """Stage i+1: `stageI_block1` (the one that may change the shape), then
    the rest, scanned (`stageI_rest`) or one by one (`stageI_blockJ`)."""
    width = self.num_filters * 2**i
    block_args = dict(
      conv=conv,
      norm=norm,
      shortcut=None if self.plain else self.shortcut,
      zero_init_last_bn=self.zero_init_last_bn,
      downsample_on_3x3=self.downsample_on_3x3,
    )
    strides = 2 if i > 0 else 1
    x = self.block_cls(width, strides, name=f'stage{i + 1}_block1', **block_args)(x, mask)
    rest = num_blocks - 1
    if rest and self.scan_blocks:
      # Blocks 2..n of a stage share shapes: one scanned body, stacked params;
      # every block sees the same (input-resolution) mask.
      stack = nn.scan(
        _SCANNABLE[self.block_cls],
        variable_axes={'params': 0, 'batch_stats': 0, 'intermediates': 0},
        split_rngs={'params': True},
        in_axes=nn.broadcast,
        length=rest,
      )
      x, _ = stack(width, 1, name=f'stage{i + 1}_rest', **block_args)(x, mask)
      return x
    for j in range(rest):
      x = self.block_cls(width, 1, name=f'stage{i + 1}_block{j + 2}', **block_args)(x, mask)
    return x

  @nn.nowrap
  def _pool(self, x, mask):
    """The global average pool (B, C), a masked mean with a mask."""
    if mask is None:
      return jnp.mean(x, axis=(1, 2))
    total = _zero_outside(x, mask).sum(axis=(1, 2), dtype=jnp.float32)
    count = mask_at(mask, x.shape[1:3]).sum(axis=(1, 2), dtype=jnp.float32)
    # An empty mask (a batch-padding example) pools to zeros, not nan.
    return (total / jnp.maximum(count, 1)[:, None]).astype(self.dtype)


def _checked_mask(mask, x_shape, train: bool):
  """`ResNet`'s `mask` as a bool (B, H, W) array, None if none; ValueError in
  training or at another shape than the input's."""
  if mask is None:
    return None
  if train:
    raise ValueError(
      'mask is for inference only: with train=True, BatchNorm '
      'batch statistics would count the padding.'
    )
  mask = jnp.asarray(mask)
  if mask.shape != x_shape[:3]:
    raise ValueError(
      f'mask must have shape (batch, height, width) = {x_shape[:3]}, got {mask.shape}'
    )
  return mask.astype(bool)


def _imagenet(stage_sizes, block_cls, plain=False):
  return dict(
    stage_sizes=stage_sizes,
    block_cls=block_cls,
    plain=plain,
    stem='imagenet',
    num_filters=64,
    shortcut='B',
    num_classes=1000,
  )


def _cifar(n, plain=False):
  return dict(
    stage_sizes=(n, n, n),
    block_cls=BasicBlock,
    plain=plain,
    stem='cifar',
    num_filters=16,
    shortcut='A',
    num_classes=10,
  )


# name -> ResNet attributes. ImageNet nets default to option B (the paper's
# ResNet-50/101/152); CIFAR nets use option A (section 4.2).
MODELS = {
  'resnet18': _imagenet((2, 2, 2, 2), BasicBlock),
  'resnet34': _imagenet((3, 4, 6, 3), BasicBlock),
  'resnet50': _imagenet((3, 4, 6, 3), BottleneckBlock),
  'resnet101': _imagenet((3, 4, 23, 3), BottleneckBlock),
  'resnet152': _imagenet((3, 8, 36, 3), BottleneckBlock),
  'plain18': _imagenet((2, 2, 2, 2), BasicBlock, plain=True),
  'plain34': _imagenet((3, 4, 6, 3), BasicBlock, plain=True),
}
for _n in (3, 5, 7, 9, 18, 200):
  MODELS[f'cifar_resnet{6 * _n + 2}'] = _cifar(_n)
  if _n != 200:
    MODELS[f'cifar_plain{6 * _n + 2}'] = _cifar(_n, plain=True)

OPTIONS = (
  'num_classes',
  'shortcut',
  'dtype',
  'bn_momentum',
  'bn_epsilon',
  'bn_group_size',
  'zero_init_last_bn',
  'downsample_on_3x3',
  'scan_blocks',
)


def list_models(pattern: str = '*') -> list[str]:
  """Names of the paper's networks matching a shell-style `pattern`, e.g.
  `list_models('cifar_resnet*')`; `create_model` builds any of them."""
  return [name for name in MODELS if fnmatch.fnmatchcase(name, pattern)]


def create_model(name: str, **options) -> ResNet:
  """Returns the named network of the paper.

  Args:
    name: one of `MODELS` (e.g. 'resnet50', 'plain34', 'cifar_resnet110').
    **options: any of `OPTIONS` (see `ResNet`'s attributes); e.g.
      `shortcut='A'`, `dtype=jnp.bfloat16`, `num_classes=10`.

  Returns:
    An unbound `ResNet`; call `init(rng, x, train=False)` / `apply`.

  Raises:
    ConfigError (a ValueError): an unknown name or option, or an option
      value out of its range, named in the message.
  """
  if name not in MODELS:
    raise errors.ConfigError(f'unknown model {name!r}; valid names: {", ".join(MODELS)}')
  check_options(options)
  if 'dtype' in options:
    options['dtype'] = jnp.dtype(options['dtype'])
  return ResNet(**{**MODELS[name], **options})


def check_options(options, prefix: str = ''):
  """Checks `create_model`'s options before anything is built.

  Args:
    options: option name -> value, as `create_model` takes them.
    prefix: what messages put before an option's name (a config's
      'model_options.'), so that they name the field to change.

  Raises:
    ConfigError: the unknown options, or the first value out of its range,
      with what it must be.
  """
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise errors.ConfigError(
      f'unknown option(s) {[prefix + k for k in unknown]}; valid options: {", ".join(OPTIONS)}'
    )
  for option, value in options.items():
    is_valid, wanted = _OPTION_CHECKS[option]
    if not is_valid(value):
      raise errors.ConfigError(f'{prefix}{option}={value!r}: it must be {wanted}')


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_dtype(value) -> bool:
  try:
    jnp.dtype(value)
  except (TypeError, ValueError):
    return False
  return True


def _is_bool(value) -> bool:
  return isinstance(value, (bool, np.bool_))


# option -> (is its value valid, what it must be). Caught by `check_options`:
# a bad value otherwise fails deep inside `init` (a division by zero, an MLIR error).
_OPTION_CHECKS = {
  'num_classes': (lambda v: _is_int(v) and v >= 1, 'a positive integer (the classifier outputs)'),
  'shortcut': (lambda v: v in SHORTCUTS, f'one of {SHORTCUTS}'),
  'dtype': (_is_dtype, 'a dtype (e.g. float32, bfloat16)'),
  'bn_momentum': (lambda v: _is_real(v) and 0 <= v <= 1, 'a number in [0, 1] (e.g. 0.9)'),
  'bn_epsilon': (lambda v: _is_real(v) and 0 <= v < math.inf, 'a finite number >= 0 (e.g. 1e-5)'),
  'bn_group_size': (lambda v: v is None or (_is_int(v) and v >= 1), 'a positive integer or None'),
  'zero_init_last_bn': (_is_bool, 'True or False'),
  'downsample_on_3x3': (_is_bool, 'True or False'),
  'scan_blocks': (_is_bool, 'True or False'),
}


def init_variables(model: ResNet, image_shape, rng) -> tuple[Any, Any]:
  """(params, batch_stats) of a fresh `model` for images of `image_shape` (H, W, 3)."""
  variables = model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  return variables['params'], variables.get('batch_stats', {})


def abstract_variables(model: ResNet, image_shape=(64, 64, 3)) -> dict:
  """Shapes of the model's {'params', 'batch_stats'}, computed without FLOPs
  (any input size gives the same: the nets are fully convolutional up to the
  global pool)."""
  params, batch_stats = jax.eval_shape(
    functools.partial(init_variables, model, image_shape), jax.random.key(0)
  )
  return {'params': params, 'batch_stats': batch_stats}


def feature_shapes(model: ResNet, image_shape=(224, 224, 3), batch_size: int = 1) -> dict:
  """Shapes of `model`'s `features=True` outputs, computed without FLOPs.

  Args:
    model: a `ResNet` (e.g. from `create_model`).
    image_shape: (H, W, 3) of the input images.
    batch_size: the leading dimension of every shape.

  Returns:
    {'stage1': (B, h, w, C), ..., 'pooled': (B, C), 'logits': (B, num_classes)}.
  """
  x = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), jnp.float32)
  out = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.key(0), x, train=False, features=True)[0], x
  )
  keys = [f'stage{i + 1}' for i in range(len(model.stage_sizes))] + ['pooled', 'logits']
  return {key: tuple(out[key].shape) for key in keys}
