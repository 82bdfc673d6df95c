"""Runs the code cells of every notebook, so notebooks cannot rot silently.

Notebooks write their figures into $NOTEBOOK_OUT_DIR (here a temporary
directory) and, with NOTEBOOK_SMOKE=1, use small stand-ins for the long runs
they are meant for. The cells run in this process (no Jupyter kernel needed).
"""

import glob
import json
import os

import pytest

from helpers import DATA_DIR, ROOT

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb')))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_and_draws(path, monkeypatch, tmp_path):
  pytest.importorskip('matplotlib', reason='notebooks need matplotlib')
  if 'layer_responses' in path and not os.path.isdir(os.path.join(DATA_DIR, 'cifar10_jpeg')):
    pytest.skip('../shared/data/tfds/cifar10_jpeg is not here')
  import matplotlib

  matplotlib.use('Agg')
  monkeypatch.chdir(ROOT)
  monkeypatch.setenv('NOTEBOOK_OUT_DIR', str(tmp_path))
  monkeypatch.setenv('NOTEBOOK_SMOKE', '1')
  namespace = {}
  for cell in json.load(open(path))['cells']:
    if cell['cell_type'] == 'code':
      exec(compile(''.join(cell['source']), path, 'exec'), namespace)  # noqa: S102
  assert glob.glob(str(tmp_path / '*.png')), 'the notebook drew nothing'


def test_there_are_notebooks():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {'layer_responses.ipynb', 'training_curves.ipynb'} <= names
