"""Tests of torchvision weight import/export: logits agree with torchvision's.

Two references, both torchvision nets in eval mode with random weights and
random BN statistics and affine parameters (so no BN is the identity); our
eval-mode logits must match (float32):
- golden files, `tests/goldens/torchvision_<name>.npz` written by
  `scripts/make_torchvision_goldens.py`: torchvision's logits with
  `synthetic_state_dict(name, seed=0)`, which the tests remake, so they need
  no torch;
- live torchvision nets, when torch and torchvision are installed
  (`pip install -e ".[torch]"`); these also check that the golden files are
  what today's torchvision computes.

Everything that needs only a numpy state dict (bad state dicts, export,
`.safetensors` files, workdirs, the CLI) runs on synthetic state dicts without
torch; only `.pth` files and the live comparisons need it.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from resnet_jax import checkpointing, config_validation, trained_workdir
from resnet_jax.data import imagenet
from resnet_jax.weights import torchvision as tw

from helpers import ROOT, synthetic_state_dict

needs_torch = pytest.mark.skipif(
  importlib.util.find_spec('torch') is None or importlib.util.find_spec('torchvision') is None,
  reason='needs torch and torchvision: pip install -e ".[torch]"',
)

GOLDEN_NAMES = ('resnet18', 'resnet50')
# torchvision's input normalisation of x / 255 (its ImageNet transforms).
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture
def scratch():
  """A directory removed at the end of the test (checkpoints are 45-100 MB)."""
  with tempfile.TemporaryDirectory() as d:
    yield d


def _golden(name):
  """{'input' (NCHW), 'logits', 'torch_version', 'torchvision_version'}."""
  with np.load(os.path.join(ROOT, 'tests', 'goldens', f'torchvision_{name}.npz')) as f:
    return {key: f[key] for key in f.files}


@pytest.fixture(scope='module', params=['resnet18', 'resnet50'])
def net(request):
  """(name, torchvision net in eval mode, input NCHW, its logits)."""
  import torch
  import torchvision

  name = request.param
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(weights=None).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0.0, 0.2, generator=g)
        m.running_mean.normal_(0.0, 0.2, generator=g)
        m.running_var.uniform_(0.5, 2.0, generator=g)
    x = torch.randn(2, 3, 64, 64, generator=g)
    logits = model(x).numpy()
  return name, model, x, logits


_apply = jax.jit(
  lambda model, variables, x: model.apply(variables, x, train=False), static_argnums=0
)


def _assert_same(actual, expected, key):
  """Exactly equal, shape and dtype included (0-d num_batches_tracked too)."""
  assert isinstance(actual, np.ndarray), key
  assert (actual.shape, actual.dtype) == (expected.shape, expected.dtype), key
  np.testing.assert_array_equal(actual, expected, err_msg=key)


def _assert_logits_close(logits, expected, what):
  """Equal to float32 precision at the logits' scale, and the same argmax."""
  scale = np.abs(expected).max()
  diff = np.abs(logits - expected).max()
  print(f'{what}: max |logit difference| {diff:.3g} at logit scale {scale:.3g}')
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * max(1.0, scale), err_msg=what)
  assert (logits.argmax(-1) == expected.argmax(-1)).all(), what


def _numpy_state_dict(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize('name', GOLDEN_NAMES)
def test_logits_match_torchvision_goldens(name):
  golden = _golden(name)
  x = golden['input']
  # The input scripts/make_torchvision_goldens.py feeds.
  np.testing.assert_array_equal(
    x, np.random.default_rng(1).standard_normal((2, 3, 64, 64), dtype=np.float32)
  )
  ours, variables = tw.from_torchvision(synthetic_state_dict(name, seed=0), name)
  assert ours.downsample_on_3x3 == (name == 'resnet50')
  logits = np.asarray(_apply(ours, variables, x.transpose(0, 2, 3, 1)))
  _assert_logits_close(
    logits, golden['logits'], f'{name} vs golden torchvision {golden["torchvision_version"]}'
  )


@needs_torch
@pytest.mark.parametrize('name', GOLDEN_NAMES)
def test_synthetic_state_dict_is_torchvisions_and_goldens_are_current(name):
  import torch
  import torchvision

  model = getattr(torchvision.models, name)(weights=None).eval()
  state_dict = synthetic_state_dict(name, seed=0)
  reference = _numpy_state_dict(model)
  assert list(state_dict) == list(reference)  # torchvision's key order
  for key, value in reference.items():
    assert (state_dict[key].shape, state_dict[key].dtype) == (value.shape, value.dtype), key
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  golden = _golden(name)
  with torch.no_grad():
    logits = model(torch.from_numpy(golden['input'])).numpy()
  _assert_logits_close(
    logits,
    golden['logits'],
    f'torchvision {torchvision.__version__} {name} vs its golden file from torchvision '
    f'{golden["torchvision_version"]} (stale? rerun scripts/make_torchvision_goldens.py)',
  )
  # What we export loads strictly into torchvision.
  exported = tw.to_torchvision(tw.from_torchvision(state_dict, name)[1], name)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


@needs_torch
def test_logits_match_torchvision(net):
  name, model, x, expected = net
  ours, variables = tw.from_torchvision(model.state_dict(), name)  # torch tensors
  assert ours.downsample_on_3x3 == (name == 'resnet50')
  logits = np.asarray(_apply(ours, variables, x.numpy().transpose(0, 2, 3, 1)))
  _assert_logits_close(logits, expected, name)


@pytest.mark.parametrize('name', GOLDEN_NAMES)
def test_export_round_trip_is_exact(name):
  state_dict = synthetic_state_dict(name)
  _, variables = tw.from_torchvision(state_dict, name)  # numpy arrays, name inferred too
  assert tw.infer_name(state_dict) == name
  exported = tw.to_torchvision(variables, name)
  assert list(exported) == list(state_dict)  # torchvision's key order
  for key, value in state_dict.items():
    _assert_same(exported[key], value, key)


@needs_torch
def test_export_round_trip_of_torchvision_is_exact(net):
  name, model, _, _ = net
  state_dict = _numpy_state_dict(model)
  _, variables = tw.from_torchvision(state_dict)
  exported = tw.to_torchvision(variables, name)
  assert list(exported) == list(state_dict)
  for key, value in state_dict.items():
    _assert_same(exported[key], value, key)


@pytest.mark.parametrize('suffix', ['.safetensors', pytest.param('.pth', marks=needs_torch)])
def test_file_round_trip(suffix, scratch):
  state_dict = synthetic_state_dict('resnet18', num_classes=10)
  path = os.path.join(scratch, 'weights' + suffix)
  tw.save_file(state_dict, path)  # numpy arrays in
  loaded = tw.load_file(path)
  assert sorted(loaded) == sorted(state_dict)
  for key, value in state_dict.items():
    _assert_same(loaded[key], value, key)
  ours, _ = tw.from_torchvision(loaded, 'resnet18')
  assert ours.num_classes == 10


@needs_torch
@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_file_round_trip_of_torch_tensors(suffix, scratch):
  import torch
  import torchvision

  model = torchvision.models.resnet18(weights=None, num_classes=10)
  state_dict = _numpy_state_dict(model)
  path = os.path.join(scratch, 'weights' + suffix)
  tw.save_file(model.state_dict(), path)  # tensors in
  loaded = tw.load_file(path)
  assert sorted(loaded) == sorted(state_dict)
  for key, value in state_dict.items():
    _assert_same(loaded[key], value, key)
  ours, _ = tw.from_torchvision(loaded, 'resnet18')
  assert ours.num_classes == 10
  if suffix == '.pth':  # What torch writes itself loads too.
    torch.save(model.state_dict(), path)
    assert sorted(tw.load_file(path)) == sorted(state_dict)


@pytest.fixture(scope='module')
def r18_state_dict():
  return synthetic_state_dict('resnet18')


def test_bad_state_dicts_fail_naming_the_key(r18_state_dict):
  sd = dict(r18_state_dict)
  del sd['layer2.0.downsample.0.weight']
  with pytest.raises(
    ValueError,
    match=r"^missing key 'layer2\.0\.downsample\.0\.weight' "
    r'in a torchvision resnet18 state dict$',
  ):
    tw.from_torchvision(sd, 'resnet18')

  sd = dict(r18_state_dict, **{'layer3.1.conv2.weight': np.zeros((256, 256, 1, 3), np.float32)})
  with pytest.raises(
    ValueError,
    match=r"^'layer3\.1\.conv2\.weight' has shape \(256, 256, 1, 3\), "
    r'torchvision resnet18 has \(256, 256, 3, 3\)$',
  ):
    tw.from_torchvision(sd, 'resnet18')

  sd = dict(r18_state_dict, **{'layer1.0.conv3.weight': np.zeros((1,), np.float32)})
  with pytest.raises(ValueError, match=r"^unexpected key 'layer1\.0\.conv3\.weight'"):
    tw.from_torchvision(sd, 'resnet18')

  with pytest.raises(
    ValueError,
    match=r"missing key 'layer1\.2\.conv1\.weight' and \d+ more "
    r'.*its keys are those of resnet18',
  ):
    tw.from_torchvision(r18_state_dict, 'resnet34')

  with pytest.raises(ValueError, match='no torchvision counterpart'):
    tw.from_torchvision(r18_state_dict, 'plain18')

  without_counters = {
    k: v for k, v in r18_state_dict.items() if not k.endswith('num_batches_tracked')
  }
  tw.from_torchvision(without_counters)  # Older state dicts lack them: fine.


@pytest.mark.parametrize('name', GOLDEN_NAMES)
def test_workdir_loads_and_exports(name, scratch):
  state_dict = synthetic_state_dict(name, seed=0)
  _, variables = tw.from_torchvision(state_dict, name)
  workdir = os.path.join(scratch, 'run')
  config = tw.write_workdir(name, variables, workdir)

  loaded_model, loaded, norm, step, _, _ = trained_workdir.load_workdir(workdir)
  assert step == 0 and loaded_model.downsample_on_3x3 == (name == 'resnet50')
  jax.tree.map(lambda a, b: _assert_same(np.asarray(a), b, ''), loaded, variables)
  np.testing.assert_array_equal(norm['mean'], imagenet.MEAN_RGB)
  np.testing.assert_array_equal(norm['std'], imagenet.STDDEV_RGB)

  # Our evaluation's (pixels - mean) / std on 0..255 is torchvision's
  # normalisation of pixels / 255: the pixels whose torchvision input is the
  # golden one give the golden logits.
  golden = _golden(name)
  pixels = 255 * (golden['input'].transpose(0, 2, 3, 1) * TORCHVISION_STD + TORCHVISION_MEAN)
  ours = (pixels - norm['mean']) / norm['std']
  logits = np.asarray(_apply(loaded_model, loaded, ours))
  _assert_logits_close(logits, golden['logits'], f'{name} workdir vs golden')

  # `main --mode=evaluate` with the repo's config file and the printed flags
  # agrees with the checkpoint.
  depth = name[len('resnet') :]
  with open(os.path.join(ROOT, 'configs', f'imagenet_r{depth}.py')) as f:
    namespace = {}
    exec(compile(f.read(), f'imagenet_r{depth}.py', 'exec'), namespace)  # noqa: S102
  repo_config = namespace['get_config']()
  for flag in tw.evaluate_flags(name).split():
    key, value = flag[len('--config.model_options.') :].split('=')
    repo_config.model_options[key] = {'True': True}.get(value, value)
  assert checkpointing.structure(repo_config) == checkpointing.structure(config)

  exported = os.path.join(scratch, 'out.safetensors')
  assert tw.export_workdir(workdir, exported) == (name, 0)
  round_trip = tw.load_file(exported)
  assert sorted(round_trip) == sorted(state_dict)  # safetensors sorts keys
  for key, value in state_dict.items():
    _assert_same(round_trip[key], value, key)

  with pytest.raises(OSError, match='fresh --workdir'):
    tw.write_workdir(name, variables, workdir)
  if name == 'resnet50':  # A paper-style (v1) ResNet-50 is refused on export.
    path = os.path.join(workdir, 'config.json')
    saved = json.load(open(path))
    saved['model_options']['downsample_on_3x3'] = False
    json.dump(saved, open(path, 'w'))
    with pytest.raises(ValueError, match='strides the first 1x1'):
      tw.export_workdir(workdir, exported)


@needs_torch
def test_workdir_of_torchvision_matches_it_on_pixels(net, scratch):
  import torch

  name, model, _, _ = net
  _, variables = tw.from_torchvision(model.state_dict(), name)  # torch tensors
  workdir = os.path.join(scratch, 'run')
  tw.write_workdir(name, variables, workdir)
  loaded_model, loaded, norm, _, _, _ = trained_workdir.load_workdir(workdir)

  # Our evaluation's (pixels - mean) / std on 0..255 is torchvision's
  # normalisation of pixels / 255.
  pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 255
  mean = torch.from_numpy(TORCHVISION_MEAN)[:, None, None]
  std = torch.from_numpy(TORCHVISION_STD)[:, None, None]
  with torch.no_grad():
    expected = model((pixels / 255 - mean) / std).numpy()
  ours = (pixels.numpy().transpose(0, 2, 3, 1) - norm['mean']) / norm['std']
  logits = np.asarray(_apply(loaded_model, loaded, ours))
  np.testing.assert_allclose(
    logits, expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max())
  )


def test_cli_imports_safetensors_without_torch(r18_state_dict, scratch):
  weights = os.path.join(scratch, 'r18.safetensors')
  tw.save_file(r18_state_dict, weights)
  workdir = os.path.join(scratch, 'run')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run = subprocess.run(
    [
      sys.executable,
      '-X',
      'importtime',
      '-m',
      'resnet_jax.weights.torchvision',
      f'--torch_file={weights}',
      f'--workdir={workdir}',
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    timeout=120,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert 'wrote' in run.stdout and '--config=configs/imagenet_r18.py' in run.stdout
  imported = {
    line.rsplit('|', 1)[-1].strip()
    for line in run.stderr.splitlines()
    if line.startswith('import time:')
  }
  assert 'jax' in imported and 'torch' not in imported  # .safetensors needs no torch.
  _, loaded, _, _, _, _ = trained_workdir.load_workdir(workdir)
  np.testing.assert_array_equal(
    loaded['params']['stage4_rest']['conv2']['kernel'][0],
    r18_state_dict['layer4.1.conv2.weight'].transpose(2, 3, 1, 0),
  )

  bad = subprocess.run(
    [
      sys.executable,
      '-m',
      'resnet_jax.weights.torchvision',
      '--export',
      f'--workdir={workdir}',
      f'--torch_file={os.path.join(scratch, "x.bin")}',
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    timeout=120,
  )
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1] == (
    f'error: {os.path.join(scratch, "x.bin")}: expected a .pth, .pt or .safetensors file'
  )


def test_training_code_never_imports_torch():
  code = (
    'import sys; from resnet_jax import evaluation, main; '
    'from resnet_jax.training import loop; '
    'from resnet_jax.weights import torchvision; '
    "print('torch' in sys.modules)"
  )
  run = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    timeout=120,
  )
  assert run.stdout.strip() == 'False', run.stderr[-2000:]


def test_config_is_imagenet_with_channel_mean_std():
  config = tw.imagenet_config('resnet101')
  assert config.model == 'resnet101' and config.input.dataset == 'imagenet2012'
  assert config.input.normalization == 'channel_mean_std'
  assert config.model_options.downsample_on_3x3 is True
  assert tw.imagenet_config('resnet34').model_options.downsample_on_3x3 is None
  config_validation.validate(config, num_devices=1)
