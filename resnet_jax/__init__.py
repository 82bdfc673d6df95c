"""resnet_jax: the networks of He et al., Deep Residual Learning for Image
Recognition (CVPR 2016), in JAX/Flax, with their training recipes.

The names a user needs, importable from the package itself:

    import resnet_jax

    resnet_jax.list_models('resnet*')             # the paper's networks
    model = resnet_jax.create_model('resnet50', num_classes=10)
    loaded = resnet_jax.load_workdir('runs/r18')  # (model, variables, norm, step, ...)
    predictor = resnet_jax.Predictor.from_workdir('runs/r18')
    predictor.classify(['cat.jpg'], top_k=5)
    model, variables = resnet_jax.from_torchvision(state_dict)
    resnet_jax.use_cpu_cores()  # Right after `import jax`: one CPU device per core.

Each is imported on first use, so `import resnet_jax` (and the command lines'
start-up) stays light. Everything else lives in the subpackages (`models`,
`data`, `training`, `research`, ...; docs/layout.md).
"""

import importlib
import typing

# Public name -> the module that defines it.
_EXPORTS = {
  'create_model': 'resnet_jax.models',
  'list_models': 'resnet_jax.models',
  'feature_shapes': 'resnet_jax.models',
  'unscan': 'resnet_jax.models',
  'rescan': 'resnet_jax.models',
  'dataset_info': 'resnet_jax.data',
  'load_workdir': 'resnet_jax.trained_workdir',
  'LoadedWorkdir': 'resnet_jax.trained_workdir',
  'Predictor': 'resnet_jax.prediction',
  'from_torchvision': 'resnet_jax.weights.torchvision',
  'to_torchvision': 'resnet_jax.weights.torchvision',
  'use_cpu_cores': 'resnet_jax.cpu_devices',
}
__all__ = [
  'LoadedWorkdir',
  'Predictor',
  'create_model',
  'dataset_info',
  'feature_shapes',
  'from_torchvision',
  'list_models',
  'load_workdir',
  'rescan',
  'to_torchvision',
  'unscan',
  'use_cpu_cores',
]
assert sorted(__all__) == sorted(_EXPORTS)

if typing.TYPE_CHECKING:  # What type checkers and IDEs see; nothing is imported at run time.
  from resnet_jax.cpu_devices import use_cpu_cores
  from resnet_jax.data import dataset_info
  from resnet_jax.models import create_model, feature_shapes, list_models, rescan, unscan
  from resnet_jax.prediction import Predictor
  from resnet_jax.trained_workdir import LoadedWorkdir, load_workdir
  from resnet_jax.weights.torchvision import from_torchvision, to_torchvision


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value  # Later lookups skip this function.
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
