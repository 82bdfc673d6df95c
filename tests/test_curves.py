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


def test_figure_draws_train_dashed_and_eval_bold_per_workdir(tmp_path):
  pytest.importorskip('matplotlib')
  workdirs = [_workdir(tmp_path, 'a', 'test_error'), _workdir(tmp_path, 'b', 'test_error')]
  ax = curves.figure(workdirs, labels=['plain', 'residual']).axes[0]
  lines = ax.get_lines()
  assert len(lines) == 4
  for i, (train, test) in enumerate(zip(lines[::2], lines[1::2])):
    assert list(train.get_xdata()) == [10, 20] and list(train.get_ydata()) == [90, 80]
    assert list(test.get_xdata()) == [20] and list(test.get_ydata()) == [75]
    assert train.get_linestyle() == '--' and test.get_linestyle() == '-'
    assert test.get_linewidth() > train.get_linewidth()
    assert train.get_color() == test.get_color() == f'C{i}'
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ['plain', 'residual']
  assert ax.get_xlabel() == 'iterations' and ax.get_ylabel() == 'error (%)'


def test_plot_writes_the_figure_as_an_image(tmp_path):
  pytest.importorskip('matplotlib')
  out = tmp_path / 'fig6.png'
  curves.plot([_workdir(tmp_path, 'a', 'test_error')], str(out))
  assert out.read_bytes().startswith(b'\x89PNG')
