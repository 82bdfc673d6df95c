"""Runs the code cells of every notebook, so notebooks cannot rot silently."""

import glob
import json
import os

import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..', 'notebooks',
                                          '*.ipynb')))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch, tmp_path):
  pytest.importorskip('matplotlib', reason='notebooks need the [notebooks] extra')
  monkeypatch.chdir(os.path.join(os.path.dirname(__file__), '..'))
  monkeypatch.setenv('CURVES_OUT', str(tmp_path / 'curves.png'))  # Not into the repo.
  namespace = {}
  for cell in json.load(open(path))['cells']:
    if cell['cell_type'] == 'code':
      exec(compile(''.join(cell['source']), path, 'exec'), namespace)  # noqa: S102
  assert os.path.exists(tmp_path / 'curves.png')


def test_there_are_notebooks():
  assert NOTEBOOKS
