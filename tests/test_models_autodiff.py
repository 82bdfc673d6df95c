"""Forward- and reverse-mode derivatives through the models.

The CPU-friendly convolution (`models.cpu_conv.conv_general_dilated`) must give XLA's
own values and gradients, keep its fast gradients inside scans, and allow
forward mode (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) everywhere.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.models import cpu_conv

KEY = jax.random.key(0)
NHWC = ('NHWC', 'HWIO', 'NHWC')


def _random_like(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])


def _tree_axpy(a, x, y):
  return jax.tree.map(lambda u, v: a * u + v, x, y)


def _vdot(x, y):
  return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


@pytest.mark.parametrize(
  'kernel,padding',
  [
    ((3, 3), ((1, 1), (1, 1))),
    ((1, 1), ((0, 0), (0, 0))),
    ((3, 3), 'SAME'),
    ((3, 3), ((0, 2), (1, 1))),
    ((3, 3), 'VALID'),
  ],
)
# Strided ones as traced inside a loop of train steps (stride 1, subsampled),
# and outside one (XLA's own, the kernel gradient reading an unfused x).
@pytest.mark.parametrize('strides,as_stride1', [((1, 1), True), ((2, 2), True), ((2, 2), False)])
# (7, 6): outputs large enough for convolutions (but stride 2 VALID); (3, 2):
# tiny outputs, computed as products of patches.
@pytest.mark.parametrize('size', [(7, 6), (3, 2)])
def test_cpu_gradient_conv_matches_lax(kernel, padding, strides, as_stride1, size):
  """Values, gradients and tangents of the CPU conv equal XLA's own."""
  kx, kk, kd, ktx, ktk = jax.random.split(jax.random.key(3), 5)
  x = jax.random.normal(kx, (2, *size, 3))
  k = jax.random.normal(kk, kernel + (3, 5))
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, NHWC)

  def loss(conv_fn, x, k):
    y = conv_fn(x, k, strides, padding, dimension_numbers=dn)
    return jnp.sum(y * jax.random.normal(kd, y.shape))

  tangents = (jax.random.normal(ktx, x.shape), jax.random.normal(ktk, k.shape))

  @functools.partial(jax.jit, static_argnums=0)
  def derivatives(conv_fn, x, k, tx, tk):
    f = functools.partial(loss, conv_fn)
    # Both arguments moving, then one (the other's tangent a symbolic zero).
    return (
      jax.grad(f, (0, 1))(x, k),
      jax.jvp(f, (x, k), (tx, tk)),
      jax.jvp(lambda a: f(a, k), (x,), (tx,)),
      jax.jvp(lambda b: f(x, b), (k,), (tk,)),
    )

  in_loop = functools.partial(cpu_conv.conv_general_dilated, strided_as_stride1=as_stride1)
  ours = derivatives(in_loop, x, k, *tangents)
  ref = derivatives(jax.lax.conv_general_dilated, x, k, *tangents)
  assert len(jax.tree.leaves(ours)) == 8
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU path only')
def test_cpu_gradients_inside_scan_are_forward_convolutions():
  # What keeps scanned stages fast on XLA:CPU (measured by the benchmark): the
  # backward pass holds only convolutions in the forward layout, none of XLA's
  # own transposed-layout gradient convolutions (e.g. f01b_i01o->01bf).
  def loss(kernels, x):
    def layer(h, k):
      return jax.nn.relu(
        cpu_conv.conv_general_dilated(h, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
      ), None

    h, _ = jax.lax.scan(layer, x, kernels)
    return jnp.sum(h**2)

  kernels = jax.ShapeDtypeStruct((3, 3, 3, 8, 8), jnp.float32)
  x = jax.ShapeDtypeStruct((4, 16, 16, 8), jnp.float32)
  hlo = jax.jit(jax.grad(loss, (0, 1))).lower(kernels, x).compile().as_text()
  labels = re.findall(r'convolution\(.*?dim_labels=([^,\s]+)', hlo)
  assert len(labels) >= 3  # forward, input gradient, kernel gradient.
  assert set(labels) == {'b01f_01io->b01f'}, labels


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU path only')
@pytest.mark.parametrize('size,convolutions', [(2, False), (4, False), (8, True)])
def test_cpu_convs_with_tiny_outputs_are_products(size, convolutions):
  # XLA:CPU's convolution is many times slower than a product at 2x2 and 3x3
  # outputs (the last stage of ImageNet nets at small crops): there, neither
  # the pass nor its gradients hold a convolution; at 8x8 they do.
  def loss(x, k):
    y = cpu_conv.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=NHWC)
    return jnp.sum(y**2)

  x = jax.ShapeDtypeStruct((4, size, size, 8), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 8, 8), jnp.float32)
  hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, k).compile().as_text()
  assert ('convolution(' in hlo) == convolutions


def _cifar20_float64():
  """cifar_resnet20 computing in float64, with non-trivial BN statistics."""
  model = models.create_model('cifar_resnet20', dtype=jnp.float64)
  variables = model.init(KEY, jnp.zeros((1, 8, 8, 3)), train=False)
  variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
  warm = jax.random.normal(jax.random.key(1), (4, 8, 8, 3), jnp.float64)
  _, state = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
    variables, warm
  )
  return model, variables['params'], state['batch_stats']


@pytest.mark.slow
def test_jvp_and_jacfwd_match_finite_differences():
  with jax.enable_x64(True):
    model, params, stats = _cifar20_float64()

    @jax.jit
    def f(params, x):
      # The fc layer's float64 output: the logits themselves are cast to
      # float32, too coarse for finite differences.
      _, state = model.apply(
        {'params': params, 'batch_stats': stats},
        x,
        train=False,
        capture_intermediates=lambda module, _: module.name == 'fc',
      )
      return state['intermediates']['fc']['__call__'][0]

    x = jax.random.normal(jax.random.key(2), (1, 8, 8, 3), jnp.float64)
    dparams = jax.tree.map(
      lambda t, p: 0.1 * t * jnp.abs(p).mean(), _random_like(params, 3), params
    )
    dx = jax.random.normal(jax.random.key(4), x.shape, jnp.float64)
    y, dy = jax.jit(lambda p, x, dp, dx: jax.jvp(f, (p, x), (dp, dx)))(params, x, dparams, dx)
    assert y.dtype == dy.dtype == jnp.float64
    # Central differences, with a step small enough to cross no ReLU kink.
    eps = 1e-6
    fd = (
      f(_tree_axpy(eps, dparams, params), x + eps * dx)
      - f(_tree_axpy(-eps, dparams, params), x - eps * dx)
    ) / (2 * eps)
    scale = float(jnp.abs(fd).max())
    assert scale > 0.1
    np.testing.assert_allclose(dy, fd, rtol=1e-6, atol=1e-6 * scale)

    # jax.linearize: the same tangent map.
    _, f_lin = jax.linearize(f, params, x)
    np.testing.assert_allclose(jax.jit(f_lin)(dparams, dx), dy, rtol=1e-9, atol=1e-9 * scale)

    # jacfwd in the input against a finite-difference Jacobian (one column per
    # pixel and channel) and against jacrev (reverse mode, the CPU gradients).
    jac = jax.jit(jax.jacfwd(f, argnums=1))(params, x)
    assert jac.shape == (1, 10, 1, 8, 8, 3)
    basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
    fd_jac = jax.jit(
      jax.vmap(lambda e: (f(params, x + eps * e) - f(params, x - eps * e)) / (2 * eps))
    )(basis)
    fd_jac = jnp.moveaxis(fd_jac, 0, -1).reshape(jac.shape)
    jac_scale = float(jnp.abs(fd_jac).max())
    np.testing.assert_allclose(jac, fd_jac, rtol=1e-6, atol=1e-6 * jac_scale)
    np.testing.assert_allclose(
      jax.jit(jax.jacrev(f, argnums=1))(params, x), jac, rtol=1e-9, atol=1e-9 * jac_scale
    )


@pytest.mark.slow
@pytest.mark.parametrize(
  'name,size,options',
  [
    ('resnet50', 32, {}),
    ('cifar_resnet110', 8, {}),
  ],
)
def test_forward_mode_through_deep_and_imagenet_nets(name, size, options):
  model = models.create_model(name, **options)
  x = jax.random.normal(jax.random.key(1), (1, size, size, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(KEY, x)
  params, stats = variables['params'], variables['batch_stats']

  def f(params, x):
    return model.apply({'params': params, 'batch_stats': stats}, x, train=False)

  tangents = (_random_like(params, 2), jax.random.normal(jax.random.key(3), x.shape))
  cotangent = jax.random.normal(jax.random.key(4), (1, model.num_classes))

  @jax.jit
  def forward_and_reverse(params, x, tangents, cotangent):
    y, dy = jax.jvp(f, (params, x), tangents)
    _, vjp = jax.vjp(f, params, x)
    return y, dy, vjp(cotangent)

  y, dy, grads = forward_and_reverse(params, x, tangents, cotangent)
  assert dy.shape == y.shape == (1, model.num_classes)
  assert np.all(np.isfinite(dy)) and float(jnp.abs(dy).max()) > 0
  # Forward and reverse mode agree: <u, J v> = <J^T u, v>.
  forward, reverse = float(jnp.vdot(cotangent, dy)), float(_vdot(grads, tangents))
  np.testing.assert_allclose(
    forward, reverse, rtol=1e-3, atol=1e-4 * float(jnp.abs(cotangent).sum() * jnp.abs(dy).max())
  )


def test_unfused_copy_is_exact_whichever_branch_runs():
  # The fusion fence's two branches return x bit for bit: a first element of
  # nan takes the second one; signed zeros, infinities and nans survive both.
  for first in (1.5, float('nan')):
    x = jnp.array([first, -0.0, float('inf'), -float('inf'), float('nan'), 3.0], jnp.float32)
    y = jax.jit(cpu_conv._unfused)(x)
    np.testing.assert_array_equal(np.asarray(y).view(np.uint32), np.asarray(x).view(np.uint32))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU path only')
@pytest.mark.parametrize('strides', [(1, 1), (2, 2)])
def test_kernel_gradients_read_x_through_a_fusion_fence(strides):
  # What keeps XLA:CPU's transposed copy of x for the kernel gradient fast: x
  # reaches it as a buffer of its own (a conditional), so the ReLU before the
  # convolution is not recomputed inside that copy.
  def loss(x, k):
    h = jax.nn.relu(x)
    y = cpu_conv.conv_general_dilated(h, k, strides, ((1, 1), (1, 1)), dimension_numbers=NHWC)
    return jnp.sum(y**2)

  x = jax.ShapeDtypeStruct((4, 16, 16, 8), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 8, 8), jnp.float32)
  with_fence = jax.jit(jax.grad(loss, 1)).lower(x, k).compile().as_text()
  assert 'conditional(' in with_fence
