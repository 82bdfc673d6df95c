"""Writes tests/goldens/torchvision_<name>.npz: torchvision's own logits on fixed weights.

    pip install -e ".[torch]"   # torch and torchvision, for this script only
    python scripts/make_torchvision_goldens.py

For resnet18 and resnet50, the tests' `helpers.synthetic_state_dict(name,
seed=0)` is loaded strictly into `torchvision.models.<name>(weights=None)`,
which is run in eval mode on a fixed random input. Each file holds `input`
(NCHW float32), `logits` (float32) and the `torch_version` and
`torchvision_version` that made them. The weights are not stored (the seeded
recipe remakes them), so tests/test_torchvision_weights.py compares this
project's nets with torchvision's code without torch. Rerun it when the
recipe, the input or the nets change; with torch installed, that test module
also checks that today's torchvision still gives these logits.
"""

import os
import sys

import numpy as np
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDENS = os.path.join(ROOT, 'tests', 'goldens')
NAMES = ('resnet18', 'resnet50')
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from helpers import synthetic_state_dict  # noqa: E402 - the tests' recipe, from tests/.


def golden_input() -> np.ndarray:
  """Two 64x64 RGB images, NCHW, already normalised as torchvision expects."""
  return np.random.default_rng(1).standard_normal((2, 3, 64, 64), dtype=np.float32)


def torchvision_logits(name: str, x: np.ndarray) -> np.ndarray:
  """torchvision's eval-mode logits of `name` with the synthetic seed-0 weights."""
  model = getattr(torchvision.models, name)(weights=None)
  state_dict = synthetic_state_dict(name, seed=0)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  with torch.no_grad():
    return model.eval()(torch.from_numpy(x)).numpy().astype(np.float32)


def main():
  os.makedirs(GOLDENS, exist_ok=True)
  x = golden_input()
  for name in NAMES:
    logits = torchvision_logits(name, x)
    path = os.path.join(GOLDENS, f'torchvision_{name}.npz')
    np.savez_compressed(
      path,
      input=x,
      logits=logits,
      torch_version=np.array(torch.__version__),
      torchvision_version=np.array(torchvision.__version__),
    )
    print(
      f'wrote {path} ({os.path.getsize(path)} bytes): logits {logits.shape}, '
      f'|max| {np.abs(logits).max():.3g}'
    )


if __name__ == '__main__':
  main()
