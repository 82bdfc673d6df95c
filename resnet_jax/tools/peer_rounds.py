"""Interleaved timing rounds of our side and PyTorch's, each in its own process.

`tools.peer_benchmark` is the command line and the two sides; this module
starts the workers, alternates their rounds, and summarizes the images/s.
"""

import json
import os
import subprocess
import sys

import numpy as np

from resnet_jax import cli, cpu_memory
from resnet_jax.tools import run_launcher


class Worker:
  """One side in its own process."""

  def __init__(self, name, argv, env):
    self.name = name
    self.proc = subprocess.Popen(
      [sys.executable, '-m', 'resnet_jax.tools.peer_benchmark', f'--worker={name}', *argv],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
    )
    self.setting = self._reply()['ready']

  def _reply(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      cli.fail(f'the {self.name} side stopped (exit code {self.proc.wait()}); see its error above')
    return json.loads(line)

  def time(self, what: str, count: int) -> float:
    self.proc.stdin.write(f'{what} {count}\n')
    self.proc.stdin.flush()
    return self._reply()['seconds']

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def _summary(rates: list[float]) -> dict:
  return dict(
    median=round(float(np.median(rates)), 1), min=round(min(rates), 1), max=round(max(rates), 1)
  )


def compare(
  config, argv, rounds, steps, eval_batches, warmup_steps=0, torch_huge_pages=False
) -> dict:
  """Interleaved rounds of both sides; images/s per side and the ratios.

  Each side runs in its own process (`python -m resnet_jax.tools.peer_benchmark
  --worker=SIDE ARGV`); each side's round first runs `warmup_steps` untimed
  train steps. `torch_huge_pages`: give PyTorch's process glibc's huge-page
  tunable too (ours has it by default: `cpu_memory`).
  """
  # PyTorch as its users run it, with glibc's default (no huge pages), said
  # explicitly: the worker, a command line of ours, would otherwise start
  # itself again with them (cpu_memory).
  torch_env = dict(os.environ)
  tunables = [t for t in torch_env.get('GLIBC_TUNABLES', '').split(':') if t]
  kept = [t for t in tunables if not t.startswith(cpu_memory.TUNABLE)]
  huge_pages = f'{cpu_memory.TUNABLE}={int(torch_huge_pages)}'
  torch_env['GLIBC_TUNABLES'] = ':'.join(kept + [huge_pages])
  workers = {'jax': Worker('jax', argv, os.environ), 'torch': Worker('torch', argv, torch_env)}
  rates = {(n, w): [] for n in workers for w in ('train', 'eval')}
  try:
    for r in range(rounds):
      for name in ('jax', 'torch') if r % 2 == 0 else ('torch', 'jax'):
        worker = workers[name]
        if warmup_steps:
          worker.time('train', warmup_steps)
        seconds = worker.time('train', steps)
        rates[(name, 'train')].append(steps * config.input.batch_size / seconds)
        if eval_batches:
          seconds = worker.time('eval', eval_batches)
          rates[(name, 'eval')].append(eval_batches * config.input.eval_batch_size / seconds)
  finally:
    for worker in workers.values():
      worker.close()
  result = dict(
    model=config.model,
    batch_size=config.input.batch_size,
    eval_batch_size=config.input.eval_batch_size,
    rounds=rounds,
    steps=steps,
    warmup_steps=warmup_steps,
    jax_setting=workers['jax'].setting,
    torch_setting=workers['torch'].setting,
    jax_glibc_tunables=os.environ.get('GLIBC_TUNABLES'),
    torch_glibc_tunables=torch_env.get('GLIBC_TUNABLES'),
    cpu=run_launcher.cpu_name(),
    vector_extensions=_vector_extensions(),
  )
  for what in ('train', 'eval'):
    if rates[('jax', what)]:
      ours, theirs = _summary(rates[('jax', what)]), _summary(rates[('torch', what)])
      result[f'{what}_images_per_sec'] = {'jax': ours, 'torch': theirs}
      result[f'{what}_ratio'] = round(ours['median'] / theirs['median'], 2)
  return result


def _vector_extensions() -> str:
  """'AVX-512' or 'AVX2' (or what else the CPU reports), from /proc/cpuinfo."""
  try:
    with open('/proc/cpuinfo') as f:
      flags_line = next((line for line in f if line.startswith('flags')), '')
  except OSError:
    return 'unknown'
  have = set(flags_line.split())
  if 'avx512f' in have:
    return 'AVX-512'
  return 'AVX2' if 'avx2' in have else 'neither AVX2 nor AVX-512'


def describe(result: dict) -> str:
  lines = [
    f'{result["model"]} on {result["cpu"]} ({result["vector_extensions"]}), '
    f'{result["rounds"]} interleaved rounds of {result["steps"]} timed train steps '
    f'after {result["warmup_steps"]} untimed',
    f'  ours: {result["jax_setting"]}; PyTorch: {result["torch_setting"]}',
  ]
  for what in ('train', 'eval'):
    if f'{what}_ratio' not in result:
      continue
    r = result[f'{what}_images_per_sec']
    size = result['batch_size'] if what == 'train' else result['eval_batch_size']
    lines.append(
      f'  {what} (batch {size}): ours {r["jax"]["median"]:.0f} images/s '
      f'({r["jax"]["min"]:.0f}-{r["jax"]["max"]:.0f}), PyTorch {r["torch"]["median"]:.0f} '
      f'({r["torch"]["min"]:.0f}-{r["torch"]["max"]:.0f}): ratio {result[f"{what}_ratio"]:.2f}'
    )
  return '\n'.join(lines)
