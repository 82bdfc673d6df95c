"""Bad input refused in one line that names what the user gave and the fix,
before anything is compiled, leaving the workdir as it was: fine-tuning
sources and patterns, damaged workdirs, and the model factory's arguments."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import resnet_jax
from resnet_jax import (
  checkpointing,
  config_lib,
  config_validation,
  errors,
  evaluation,
  models,
  trained_workdir,
)
from resnet_jax.training import loop
from resnet_jax.weights import init_from
from resnet_jax.weights import torchvision as tw

from helpers import (
  DATA_DIR,
  ROOT,
  fault_config,
  has_dataset,
  synthetic_state_dict,
  tiny_config,
  tiny_splits,
)

WORKER = os.path.join(ROOT, 'tests', 'fault_worker.py')


def one_line(e: pytest.ExceptionInfo) -> str:
  message = str(e.value)
  assert '\n' not in message, message
  return message


def files_under(directory) -> list[str]:
  return sorted(str(p.relative_to(directory)) for p in directory.rglob('*'))


def untrained_workdir(path, config=None):
  """A workdir with its `config.json` and a `checkpoints/` that holds no step
  (a run stopped before its first save)."""
  (path / checkpointing.CHECKPOINT_DIR).mkdir(parents=True)
  config = config or tiny_config()
  (path / 'config.json').write_text(config.to_json_best_effort())
  return path


def inference_workdir(path):
  """A workdir holding a fresh 10-class CIFAR net as step 0."""
  config = fault_config()
  config.model_options.num_classes = 10
  model = models.create_model(config.model, num_classes=10)
  params, batch_stats = models.init_variables(model, (8, 8, 3), jax.random.key(0))
  norm = {'mean': np.zeros((8, 8, 3), np.float32), 'std': np.ones(3, np.float32)}
  state = {'params': params, 'batch_stats': batch_stats, 'norm': norm, 'step': np.int32(0)}
  trained_workdir.save_for_inference(str(path), config, state)
  return path


def torchvision_config(source):
  """An ImageNet ResNet-18 config that starts from `source` (reads TFDS metadata only)."""
  config = config_lib.imagenet('resnet18')
  config.model_options.shortcut = 'B'
  config.init_from = str(source)
  return config


@pytest.mark.parametrize('with_checkpoint_dir', [True, False])
def test_init_from_a_workdir_without_a_checkpoint_fails_in_check(tmp_path, with_checkpoint_dir):
  source = untrained_workdir(tmp_path / 'source')
  if not with_checkpoint_dir:
    shutil.rmtree(source / checkpointing.CHECKPOINT_DIR)
  config = tiny_config()
  config.init_from = str(source)
  with pytest.raises(errors.MissingError) as e:
    init_from.check(config)
  message = one_line(e)
  assert f'--config.init_from={source}' in message and 'no saved checkpoint' in message
  assert '--workdir' not in message  # The source is not the run's own workdir.
  with pytest.raises(errors.MissingError, match='no saved checkpoint'):
    loop.train_and_evaluate(config, str(tmp_path / 'new'), data=tiny_splits())
  assert not (tmp_path / 'new').exists()


def test_init_from_a_safetensors_file_of_another_net_says_what_it_is_not(tmp_path):
  other = tmp_path / 'other.safetensors'
  tw.save_file({'encoder.weight': np.zeros((4, 3), np.float32)}, str(other))
  with pytest.raises(errors.ConfigError) as e:
    init_from.check(torchvision_config(other))
  message = one_line(e)
  assert f'--config.init_from={other}' in message
  assert 'not a torchvision ResNet' in message and 'encoder.weight' in message
  assert 'pass its name' not in message and 'training workdir' in message
  # A torchvision state dict that lacks a key fails here too, not after compiling.
  state_dict = synthetic_state_dict('resnet18')
  del state_dict['layer2.0.bn1.weight']
  partial = tmp_path / 'partial.safetensors'
  tw.save_file(state_dict, str(partial))
  with pytest.raises(errors.UserError, match='init_from.*missing key .layer2.0.bn1.weight'):
    init_from.check(torchvision_config(partial))


def test_init_from_a_pth_file_without_torch_names_the_extra_and_the_converter(
  tmp_path, monkeypatch
):
  path = tmp_path / 'resnet18.pth'
  path.write_bytes(b'not read: torch is missing')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails, as without the extra.
  with pytest.raises(errors.UserError) as e:
    init_from.check(torchvision_config(path))
  message = one_line(e)
  assert f'--config.init_from={path}' in message and 'needs torch' in message
  assert 'pip install -e ".[torch]"' in message
  assert '.safetensors' in message and 'python -m resnet_jax.weights.torchvision' in message


def test_a_config_json_that_is_not_json_is_a_config_error(tmp_path):
  workdir = untrained_workdir(tmp_path / 'run')
  (workdir / 'config.json').write_text('{"model": "cifar_resnet20",')
  for load in (trained_workdir.load_workdir, resnet_jax.Predictor.from_workdir):
    with pytest.raises(errors.ConfigError) as e:
      load(str(workdir))
    message = one_line(e)
    assert f'{workdir / "config.json"} is not valid JSON' in message
    assert '--config' in message  # The fix: the config file it was trained with.


def test_a_checkpoint_without_its_state_is_a_checkpoint_error(tmp_path):
  workdir = inference_workdir(tmp_path / 'run')
  shutil.rmtree(workdir / 'checkpoints' / '0' / 'state')
  before = files_under(workdir)
  with pytest.raises(errors.CheckpointError) as e:
    trained_workdir.load_workdir(str(workdir))
  message = one_line(e)
  assert f'{workdir / "checkpoints"}' in message and 'state' in message
  assert 'earlier checkpoint' in message and 'retrain' in message
  with pytest.raises(errors.CheckpointError, match='no state'):
    evaluation.evaluate_workdir(fault_config(), str(workdir), data=tiny_splits())
  assert files_under(workdir) == before


@pytest.mark.parametrize(
  'options, name',
  [
    ({'num_classes': 0}, 'num_classes'),
    ({'num_classes': -3}, 'num_classes'),
    ({'num_classes': 2.5}, 'num_classes'),
    ({'num_classes': True}, 'num_classes'),
    ({'bn_epsilon': -1e-5}, 'bn_epsilon'),
    ({'bn_epsilon': float('nan')}, 'bn_epsilon'),
    ({'bn_momentum': 1.5}, 'bn_momentum'),
    ({'dtype': 'float7'}, 'dtype'),
    ({'bn_group_size': 0}, 'bn_group_size'),
    ({'scan_blocks': 'no'}, 'scan_blocks'),
  ],
)
def test_create_model_refuses_bad_arguments(options, name):
  with pytest.raises(errors.ConfigError, match=f'^{name}='):
    models.create_model('cifar_resnet20', **options)


def test_create_model_refuses_an_unknown_name_as_a_config_error():
  with pytest.raises(errors.ConfigError, match='resnet19'):
    models.create_model('resnet19')


@pytest.mark.parametrize('pattern', ['.', '.*', '^(?!fc/)|fc/'])
def test_freeze_matching_every_parameter_is_refused_before_the_workdir(tmp_path, pattern):
  config = tiny_config()
  config.freeze = pattern
  with pytest.raises(errors.ConfigError) as e:
    config_validation.validate(config, jax.device_count())
  message = one_line(e)
  assert f'--config.freeze={config.freeze!r} matches every parameter' in message
  with pytest.raises(errors.ConfigError, match='matches every parameter'):
    loop.train_and_evaluate(config, str(tmp_path / 'new'), data=tiny_splits())
  assert not (tmp_path / 'new').exists()


def test_freeze_matching_no_parameter_leaves_no_workdir(tmp_path):
  config = tiny_config()
  config.freeze = 'no_such_layer'
  with pytest.raises(errors.ConfigError, match="--config.freeze='no_such_layer' matches no"):
    loop.train_and_evaluate(config, str(tmp_path / 'new'), data=tiny_splits())
  assert not (tmp_path / 'new').exists()


@pytest.fixture(scope='module')
def cli_results(tmp_path_factory):
  """The command lines' results, forked from one interpreter (fault_worker's `cli`)."""
  root = tmp_path_factory.mktemp('cli')
  garbled = untrained_workdir(root / 'garbled')
  (garbled / 'config.json').write_text('{"model": "cifar_resnet20",')
  source = untrained_workdir(root / 'untrained')
  cifar = [
    '--config=configs/cifar10_resnet20.py',
    '--config.input.dataset=cifar10_jpeg',
    f'--config.input.data_dir={DATA_DIR}',
  ]
  cases = {
    'garbled config.json': (['--mode=evaluate', f'--workdir={garbled}'], garbled),
    'untrained init_from': (
      [*cifar, f'--config.init_from={source}', f'--workdir={root / "new"}'],
      root / 'new',
    ),
  }
  snapshots = {name: (d, files_under(d) if d.exists() else None) for name, (_, d) in cases.items()}
  argvs = [{'module': 'resnet_jax.main', 'argv': argv} for argv, _ in cases.values()]
  (root / 'cases.json').write_text(json.dumps(argvs))
  run = subprocess.run(
    [sys.executable, WORKER, 'cli', str(root / 'cases.json'), str(root / 'results.json')],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((root / 'results.json').read_text())
  return {name: (result, *snapshots[name]) for name, result in zip(cases, results)}


def cli_error(cli_results, case) -> str:
  """The case's one `error:` line, having checked that its workdir is as it was."""
  result, workdir, before = cli_results[case]
  assert result['code'] == 1, (result['stdout'][-1000:], result['stderr'][-3000:])
  lines = [line for line in result['stderr'].splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), result['stderr'][-3000:]
  assert (files_under(workdir) if workdir.exists() else None) == before
  return lines[0]


def test_evaluate_names_the_workdirs_config_json_that_is_not_json(cli_results):
  line = cli_error(cli_results, 'garbled config.json')
  workdir = cli_results['garbled config.json'][1]
  assert f'{workdir / "config.json"} is not valid JSON' in line
  assert 'config_from_workdir.py' not in line


def test_init_from_an_untrained_workdir_fails_before_the_new_workdir(cli_results):
  if not has_dataset('cifar10_jpeg'):
    pytest.skip('needs the local cifar10_jpeg')
  line = cli_error(cli_results, 'untrained init_from')
  assert '--config.init_from=' in line and 'no saved checkpoint' in line
