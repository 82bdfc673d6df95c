"""Convolutions whose gradients stay fast inside XLA:CPU's while loops.

XLA:CPU runs its own gradient convolutions (kernel and lhs in transposed
layouts) far slower inside a while loop (a scanned stage, or a loop of train
steps) than outside (docs/speed.md); forward convolutions run at full speed
there.
`conv_general_dilated` is a drop-in `nn.Conv(conv_general_dilated=...)` that,
on CPU only, takes those gradients as forward convolutions, and computes
convolutions with tiny outputs (`TINY_OUTPUT_AREA`) as one matrix product of
the input's patches, which XLA:CPU's own convolution runs many times slower
at those shapes (docs/speed.md). On CPU every kernel gradient reads x as a
buffer that XLA cannot fuse its producers into (`_unfused`), which keeps its
transposed copy of x fast. Other platforms compile XLA's own convolution
unchanged.
"""

import functools

import jax
import jax.numpy as jnp

# Outputs of at most this many positions (4x4) are computed as a matrix
# product of patches on CPU: XLA:CPU's convolution (Eigen's, not YNNPACK's)
# is far slower than a product at 2x2 and 3x3 outputs with many channels
# (ImageNet nets' last stage at small crops) and no faster at 4x4; at
# CIFAR's 8x8 and larger the product loses to the convolution.
TINY_OUTPUT_AREA = 16


def _conv(x, k, pads, precision, strides=(1, 1)):
  return jax.lax.conv_general_dilated(
    x, k, strides, pads, precision=precision, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def _input_gradient(k, pads, precision, dy):
  """The gradient of `_conv` in x as a forward convolution (flipped kernel)."""
  kh, kw = k.shape[:2]
  (lo_h, hi_h), (lo_w, hi_w) = pads
  k_flipped = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)
  return _conv(
    dy, k_flipped, ((kh - 1 - lo_h, kh - 1 - hi_h), (kw - 1 - lo_w, kw - 1 - hi_w)), precision
  )


def _unfused(x):
  """x, as a buffer of its own that XLA:CPU cannot fuse into x's consumers.

  XLA:CPU transposes a buffer with its own fast routine, but a transpose with
  x's producers fused into it (a slice of a scan's stack, BatchNorm and ReLU,
  or a whole stage's chain of blocks recomputed) runs element by element,
  5-60x slower (docs/speed.md). `lax.optimization_barrier` does not stop that:
  XLA:CPU removes barriers before it fuses. A conditional does, since fusion
  never crosses one; both branches return x exactly (the second is written
  differently so that XLA does not merge them), whichever the predicate picks.
  """
  first = x.reshape(-1)[0]
  return jax.lax.cond(first == first, lambda x: x, lambda x: x * 1, x)


def _kernel_gradient(x, pads, precision, dy):
  """The gradient of `_conv` in k as a forward convolution.

  dk[i, j, c, o] = sum_{b,h,w} x[b, h+i, w+j, c] dy[b, h, w, o]: a convolution
  with the input channels as the batch and the batch as the channels.
  """
  x_cb = _unfused(x).transpose(3, 1, 2, 0)
  dk = _conv(x_cb, dy.transpose(1, 2, 0, 3), pads, precision)
  return dk.transpose(1, 2, 0, 3)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_cpu_gradients(x, k, pads, precision):
  return _conv(x, k, pads, precision)


@functools.partial(_conv_cpu_gradients.defjvp, symbolic_zeros=True)
def _conv_cpu_gradients_jvp(pads, precision, primals, tangents):
  # XLA:CPU runs its own gradient convolutions (kernel and lhs in transposed
  # layouts) far slower inside a while loop (a scanned stage) than outside;
  # forward convolutions run at full speed there. So the tangent map
  # dy = conv(dx, k) + conv(x, dk) is written as the transpose of the two
  # gradients above: reverse mode transposes it back and gets exactly those
  # forward convolutions, while forward mode (jvp, jacfwd) evaluates it as is.
  x, k = primals
  dx, dk = tangents
  y = _conv(x, k, pads, precision)
  y_type = jax.ShapeDtypeStruct(y.shape, y.dtype)

  def transposed(gradient):  # Traced only for a tangent that is not a symbolic zero.
    return lambda t: jax.linear_transpose(gradient, y_type)(t)[0]

  along_x = transposed(functools.partial(_input_gradient, k, pads, precision))
  along_k = transposed(functools.partial(_kernel_gradient, x, pads, precision))
  return y, _output_tangent(y, (dx, along_x), (dk, along_k))


def _output_tangent(y, *terms):
  """The sum of f(t) over the (tangent t, linear map f) terms whose tangent is
  not a symbolic zero, in order; zeros shaped like y if every one is."""
  parts = [f(t) for t, f in terms if not isinstance(t, jax.custom_derivatives.SymbolicZero)]
  return sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y)


def _conv_as_product(x, k, pads, strides, precision):
  """The convolution as one product of the input's patches with the kernel.

  Differentiated by JAX as slices, pads and products (no convolution
  primitive), which stay fast inside loops too. Named `conv_as_product` in
  the compiled program, so that profiles count it as a convolution.
  """
  with jax.named_scope('conv_as_product'):
    kh, kw = k.shape[:2]
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    (sh, sw), (hp, wp) = strides, padded.shape[1:3]
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    patches = [
      padded[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
      for i in range(kh)
      for j in range(kw)
    ]
    # Channel order (i, j, c) matches the HWIO kernel reshaped to (kh*kw*c, o).
    patches = jnp.concatenate(patches, axis=-1) if len(patches) > 1 else patches[0]
    return jnp.einsum('bhwc,co->bhwo', patches, k.reshape(-1, k.shape[-1]), precision=precision)


def _is_tiny(lhs, rhs, strides, pads) -> bool:
  """Whether the convolution of `lhs` (NHWC) by `rhs` (HWIO) has a non-empty
  output of at most `TINY_OUTPUT_AREA` positions, and pads without cropping."""
  if any(p < 0 for pair in pads for p in pair):  # Negative pads crop.
    return False
  sizes = [
    (n + lo + hi - kernel) // s + 1
    for n, (lo, hi), kernel, s in zip(lhs.shape[1:3], pads, rhs.shape[:2], strides)
  ]
  return 0 < sizes[0] * sizes[1] <= TINY_OUTPUT_AREA


def _keeping_only_inputs(conv, x, k):
  """conv(x, k), keeping only x and k for the backward pass.

  Without the checkpoint, the kernel gradient's transposed copy of x is a
  residual: XLA computes it in the forward pass, fused with x's producers
  (BatchNorm, ReLU) and, in a scanned stage, stacked over the blocks, which
  costs more than a plain transpose of x in the backward pass (docs/speed.md).
  Nothing is recomputed but that transpose (with its unfused copy of x) and
  the flipped kernel: the forward convolution's output is not needed by its
  gradients.
  """
  policy = jax.checkpoint_policies.nothing_saveable
  return jax.checkpoint(conv, prevent_cse=False, policy=policy)(x, k)


def _conv_with_cpu_gradients(x, k, pads, precision):
  """`_conv_cpu_gradients`, keeping only x and k for the backward pass."""
  return _keeping_only_inputs(lambda x, k: _conv_cpu_gradients(x, k, pads, precision), x, k)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _strided_conv(x, k, strides, pads, precision):
  return _conv(x, k, pads, precision, strides)


@functools.partial(_strided_conv.defjvp, symbolic_zeros=True)
def _strided_conv_jvp(strides, pads, precision, primals, tangents):
  # XLA's own convolution and gradients, but the kernel gradient reads x as an
  # unfused buffer: otherwise XLA:CPU fuses x's producers (in unscanned
  # stages, the whole previous stage's chain of blocks) into the transposed
  # copy of x that this gradient makes, recomputing them element by element.
  x, k = primals
  dx, dk = tangents
  conv = functools.partial(_conv, pads=pads, precision=precision, strides=strides)
  y = conv(x, k)
  return y, _output_tangent(y, (dx, lambda t: conv(t, k)), (dk, lambda t: conv(_unfused(x), t)))


def _strided_with_cpu_gradients(x, k, strides, pads, precision):
  """`_strided_conv`, keeping only x and k for the backward pass."""
  return _keeping_only_inputs(lambda x, k: _strided_conv(x, k, strides, pads, precision), x, k)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  *,
  strided_as_stride1: bool = False,
  **kwargs,
):
  """`lax.conv_general_dilated` with CPU-friendly gradients for stride-1 convs.

  On CPU, NHWC convolutions with tiny outputs (at most `TINY_OUTPUT_AREA`
  positions, any stride) are products of patches (`_conv_as_product`), and
  the other stride-1 ones (all those inside scanned stages) take gradients
  computed by `_conv_cpu_gradients`; strided ones keep XLA's own
  convolution and gradients, the kernel gradient reading x unfused
  (`_strided_conv`). Every other platform and case uses XLA's
  own convolution and gradient unchanged (`lax.platform_dependent`
  picks at lowering time). Same values either way, and both differentiate in
  forward mode too (`jax.jvp`, `jax.jacfwd`, `jax.linearize`).

  `strided_as_stride1`: for code traced inside a loop of train steps. XLA:CPU
  runs the gradients of strided convolutions far slower inside a while loop,
  like those of stride-1 ones, so on CPU a strided convolution is then
  computed as the stride-1 one, subsampled: s*s times the FLOPs of those few
  layers, all in fast forward convolutions. Outside a loop, strided
  convolutions keep XLA's own, cheaper path.
  """
  standard = functools.partial(
    jax.lax.conv_general_dilated,
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
    **kwargs,
  )
  simple = not kwargs and _is_plain_nhwc(
    lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count
  )
  if not simple:
    return standard(lhs, rhs)
  pads = _explicit_pads(lhs, rhs, window_strides, padding)
  cpu = _cpu_convolution(lhs, rhs, tuple(window_strides), pads, precision, strided_as_stride1)
  return jax.lax.platform_dependent(lhs, rhs, cpu=cpu, default=standard)


def _cpu_convolution(lhs, rhs, strides, pads, precision, strided_as_stride1):
  """The CPU computation of a plain NHWC convolution: a product of patches
  for tiny outputs, else with `_conv_cpu_gradients`; strided ones outside a
  loop of train steps keep XLA's own, cheaper, path (`_strided_conv`)."""
  if _is_tiny(lhs, rhs, strides, pads):
    return functools.partial(_conv_as_product, pads=pads, strides=strides, precision=precision)
  strided = any(s != 1 for s in strides)
  if strided and not strided_as_stride1:
    return functools.partial(
      _strided_with_cpu_gradients, strides=strides, pads=pads, precision=precision
    )

  def cpu(x, k):
    y = _conv_with_cpu_gradients(x, k, pads, precision)
    # Output i of a stride-s conv is output s*i of the stride-1 conv with the
    # same padding (the same window and products).
    return y[:, :: strides[0], :: strides[1]] if strided else y

  return cpu


def _is_plain_nhwc(
  lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count
) -> bool:
  """Whether the convolution is one `_conv_with_cpu_gradients` computes:
  NHWC input, HWIO kernel, no dilation, no feature groups."""
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  return (
    feature_group_count == 1
    and all(d == 1 for d in (lhs_dilation or (1,)))
    and all(d == 1 for d in (rhs_dilation or (1,)))
    and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
  )


def _explicit_pads(lhs, rhs, window_strides, padding) -> tuple:
  """`padding` ('SAME', 'VALID' or pairs) as ((low, high), (low, high)) of ints."""
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  return tuple(tuple(int(p) for p in pair) for pair in padding)
