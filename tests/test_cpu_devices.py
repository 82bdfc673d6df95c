"""One CPU device per core by default, huge pages for XLA's buffers, and the
step profile's attribution of op times."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import cpu_devices, cpu_memory
from resnet_jax.tools import hlo_profile

from helpers import ROOT


@pytest.mark.parametrize(
  'cores, batch, expected',
  [
    (2, 128, 2),
    (3, 128, 2),  # 3 does not divide 128.
    (16, 128, 8),  # 16 devices would hold 8 examples each.
    (64, 1024, cpu_devices.MAX_DEVICES),
    (4, None, 4),
    (1, 128, 1),
    (2, 8, 1),  # 4 examples per device is too few.
    (2, 31, 1),
  ],
)
def test_device_count_divides_the_batch_in_large_enough_shares(cores, batch, expected):
  assert cpu_devices.device_count_for(cores, batch) == expected


@pytest.fixture
def fresh_choice(monkeypatch):
  """A process that has not chosen yet, with no device count set anywhere."""
  monkeypatch.setitem(cpu_devices._state, 'choice', None)
  monkeypatch.delenv('JAX_NUM_CPU_DEVICES', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=1')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  set_counts = []
  monkeypatch.setattr(
    cpu_devices.jax.config,
    'update',
    lambda name, value: set_counts.append((name, value)),
  )
  return set_counts


def test_a_cpu_host_gets_one_device_per_usable_core(fresh_choice, monkeypatch):
  monkeypatch.setattr(cpu_devices, 'usable_cores', lambda: 4)
  choice = cpu_devices.use_cpu_cores(batch_size=128)
  assert choice == cpu_devices.Choice(4, 'one per usable core (4)')
  assert fresh_choice == [('jax_num_cpu_devices', 4)]
  # The first choice stands: a later call changes nothing.
  assert cpu_devices.use_cpu_cores(batch_size=8) is choice
  assert cpu_devices.describe() == 'one per usable core (4)'


def test_a_batch_that_the_cores_do_not_divide_gets_fewer_devices_and_says_why(
  fresh_choice, monkeypatch
):
  monkeypatch.setattr(cpu_devices, 'usable_cores', lambda: 3)
  choice = cpu_devices.use_cpu_cores(batch_size=128)
  assert choice.count == 2 and '3 usable cores' in choice.reason and '128' in choice.reason


@pytest.mark.parametrize(
  'setting, reason',
  [
    ({'JAX_NUM_CPU_DEVICES': '3'}, 'set by JAX_NUM_CPU_DEVICES'),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=5'}, 'set by XLA_FLAGS'),
    ({'JAX_PLATFORMS': 'cuda,cpu'}, 'JAX runs on cuda, not the CPU'),
  ],
)
def test_a_count_set_by_the_user_or_an_accelerator_is_left_alone(
  fresh_choice, monkeypatch, setting, reason
):
  for key, value in setting.items():
    monkeypatch.setenv(key, value)
  assert cpu_devices.use_cpu_cores(batch_size=128) == cpu_devices.Choice(None, reason)
  assert fresh_choice == []


def test_processes_sharing_a_host_keep_one_device_each(fresh_choice):
  choice = cpu_devices.use_cpu_cores(batch_size=128, num_processes=2)
  assert choice.count is None and 'share the cores' in choice.reason
  assert fresh_choice == []


def test_the_command_lines_use_every_core_by_default():
  """End to end: a command started with no device count set splits its
  batch over one CPU device per usable core, and says so in its result."""
  env = dict(os.environ)
  env.pop('JAX_NUM_CPU_DEVICES', None)
  env['XLA_FLAGS'] = '--xla_backend_optimization_level=1'
  expected = cpu_devices.device_count_for(cpu_devices.usable_cores(), 32)
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'resnet_jax.tools.benchmark',
      '--config=configs/cifar10_resnet20.py',
      '--config.input.batch_size=32',
      '--steps=1',
      '--warmup=0',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert f'on {expected}x cpu' in out.stdout


@pytest.fixture
def restart_conditions(monkeypatch):
  """A command line on a Linux/glibc CPU host with huge pages on."""
  monkeypatch.setattr(cpu_memory, '_run_as_command', lambda: True)
  monkeypatch.setattr(cpu_memory, '_huge_pages_available', lambda: True)
  monkeypatch.setattr(cpu_memory.cpu_devices, 'accelerator', lambda: None)
  monkeypatch.setattr(cpu_memory.sys, 'platform', 'linux')
  monkeypatch.setattr(cpu_memory.platform, 'libc_ver', lambda: ('glibc', '2.36'))
  execs = []
  monkeypatch.setattr(cpu_memory.os, 'execv', lambda path, argv: execs.append((path, argv)))
  return execs


def test_a_cpu_command_restarts_once_with_huge_pages(restart_conditions, monkeypatch):
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.arena_max=2')
  monkeypatch.setattr(cpu_memory.sys, 'orig_argv', ['python', '-m', 'resnet_jax.main', '--x=1'])
  cpu_memory.restart_with_huge_pages()
  command = [sys.executable, '-m', 'resnet_jax.main', '--x=1']
  assert restart_conditions == [(sys.executable, command)]
  assert os.environ['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  # Started again, it finds the tunable and runs.
  cpu_memory.restart_with_huge_pages()
  assert len(restart_conditions) == 1


@pytest.mark.parametrize('tunables', ['glibc.malloc.hugetlb=0', 'glibc.malloc.hugetlb=1'])
def test_a_tunable_set_by_the_user_is_kept(restart_conditions, monkeypatch, tunables):
  monkeypatch.setenv('GLIBC_TUNABLES', tunables)
  cpu_memory.restart_with_huge_pages()
  assert restart_conditions == [] and os.environ['GLIBC_TUNABLES'] == tunables


def test_an_imported_package_never_restarts_the_process():
  assert not cpu_memory._run_as_command()  # pytest is __main__ here.


def test_nested_trace_events_count_their_own_time_only():
  events = [
    dict(ph='X', pid=1, tid=1, ts=0, dur=100, name='while.1'),
    dict(ph='X', pid=1, tid=1, ts=10, dur=30, name='conv'),
    dict(ph='X', pid=1, tid=1, ts=50, dur=20, name='conv'),
    dict(ph='X', pid=1, tid=2, ts=0, dur=5, name='conv'),  # Another thread.
  ]
  assert hlo_profile.self_times(events) == {'while.1': 50, 'conv': 55}


def test_the_ops_of_a_compiled_program_are_grouped_by_what_they_do():
  def forward(k, x):
    nhwc = ('NHWC', 'HWIO', 'NHWC')
    y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=nhwc)
    return jnp.sum(jax.nn.relu(y) ** 2)

  text = jax.jit(forward).lower(jnp.ones((3, 3, 4, 4)), jnp.ones((2, 8, 8, 4))).compile().as_text()
  instructions = hlo_profile.parse_hlo(text)
  groups = {hlo_profile.group_of(i) for i in instructions.values() if i.opcode != 'parameter'}
  assert 'convolution forward' in groups and groups <= set(hlo_profile.GROUPS)

  def group(opcode, op_name, fused=()):
    return hlo_profile.group_of(hlo_profile.Instruction(opcode, op_name, frozenset(fused)))

  step = 'jit(train_steps)/'
  assert group('fusion', step + 'transpose(jvp(ResNet))/stage1/conv1/cond', ['convolution']) == (
    'convolution gradients'
  )
  assert group('fusion', step + 'jvp(ResNet)/stage1_block1/bn1/mul', ['multiply']) == (
    'BatchNorm forward'
  )
  assert group('all-reduce', step + 'transpose(jvp(ResNet))/add_any') == (
    'collectives (gradient all-reduce)'
  )
  assert group(
    'fusion', step + 'jvp(ResNet)/while/body/dynamic_update_slice', ['dynamic-update-slice']
  ) == ('scan: stacking per-block values')
  assert group('fusion', step + 'augment/jit(_randint)/add', ['add']) == 'augmentation'
  product = 'transpose(jvp(ResNet))/stage4_rest/conv1/cond/conv_as_product/dot_general'
  assert group('fusion', step + product, ['dot']) == 'convolution gradients'
  assert group('fusion', step + 'add', ['add', 'multiply']) == 'optimizer update and metrics'


def test_the_pytorch_peer_is_the_same_net_as_ours():
  torch = pytest.importorskip('torch')
  from resnet_jax import models
  from resnet_jax.tools import torch_resnet

  for name in ('cifar_resnet20', 'cifar_resnet56'):
    ours = models.abstract_variables(models.create_model(name), (32, 32, 3))['params']
    ours_count = sum(x.size for x in jax.tree.leaves(ours))
    peer = torch_resnet.CifarResNet(torch_resnet.depth_to_n(name))
    assert sum(p.numel() for p in peer.parameters()) == ours_count
  step = torch_resnet.TrainStep('cifar_resnet20')
  images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
  assert torch_resnet.augment(images.float().permute(0, 3, 1, 2)).shape == (4, 3, 32, 32)
  assert float(step(images, torch.tensor([0, 1, 2, 3]))) > 0
  assert step.evaluate(images).shape == (4, 10)


def test_the_pytorch_peers_profile_groups_its_step_and_refuses_other_nets():
  pytest.importorskip('torch')
  command = [sys.executable, '-m', 'resnet_jax.tools.torch_step_profile', '--batch_size=8']
  result = subprocess.run([*command, '--steps=1', '--top=3'], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  groups = dict(line.rsplit(None, 1) for line in result.stdout.splitlines()[2:11] if line.strip())
  assert float(groups['convolution forward']) > 0 and float(groups['convolution gradients']) > 0
  assert float(groups['BatchNorm backward']) > 0 and 'all ops (profiled)' in groups
  assert 'aten::' in result.stdout.split('costliest ops:')[1]
  bad = subprocess.run([*command, '--model=resnet50'], capture_output=True, text=True)
  assert bad.returncode != 0 and 'error: --model:' in bad.stderr
