"""Tests of the Fig. 1/4/6-style curves drawn from metrics.jsonl."""

import json

import pytest

from resnet_jax.research import curves


def _workdir(tmp_path, name, eval_key):
  path = tmp_path / name
  path.mkdir()
  records = [
    {'step': 10, 'train_error': 0.9},
    {'step': 20, 'train_error': 0.8},
    {'step': 20, eval_key: 0.85},
    {'step': 20, eval_key: 0.75},
  ]  # Redone eval.
  with open(path / 'metrics.jsonl', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  return str(path)


def test_bold_curve_is_test_error_for_cifar_and_validation_for_imagenet(tmp_path):
  cifar = curves.read_metrics(_workdir(tmp_path, 'cifar', 'test_error'))
  imagenet = curves.read_metrics(_workdir(tmp_path, 'imagenet', 'validation_error'))
  assert curves.default_eval_key(cifar) == 'test_error'
  assert curves.default_eval_key(imagenet) == 'validation_error'
  # The later record of a redone step wins.
  assert curves.series(imagenet, 'validation_error') == ([20], [0.75])
  assert curves.series(imagenet, 'train_error') == ([10, 20], [0.9, 0.8])


def test_plot_writes_a_figure(tmp_path):
  pytest.importorskip('matplotlib')
  out = tmp_path / 'fig4.png'
  curves.plot([_workdir(tmp_path, 'a', 'validation_error')], str(out))
  assert out.stat().st_size > 1000
