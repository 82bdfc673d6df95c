"""Input pipelines: what a dataset is (`catalog`, from its own metadata), the
interface the loop calls (`core`), one module per family, and image folders
(`folder`).

`create(config)` returns the family's `core.Dataset`:
- CIFAR (`cifar`): decoded into memory once; crop/flip augmentation and mean
  subtraction on the device.
- ImageNet (`imagenet`, with its host-side views in `imagenet_views`): JPEGs
  streamed from TFDS data sources, decoded and augmented in Grain worker
  processes; uint8 crops go to the device, where lighting noise and
  normalisation run.
"""

import ml_collections

from resnet_jax.data import catalog
from resnet_jax.data.catalog import DatasetInfo, dataset_info
from resnet_jax.data.cifar import CifarData
from resnet_jax.data.core import HOLDOUT, Dataset, check_dataset
from resnet_jax.data.imagenet import ImagenetData

__all__ = [
  'HOLDOUT',
  'CifarData',
  'Dataset',
  'DatasetInfo',
  'ImagenetData',
  'catalog',
  'check_dataset',
  'create',
  'dataset_info',
]


def create(config: ml_collections.ConfigDict, preloaded=None) -> Dataset:
  """The config's dataset. `preloaded` (CIFAR only): (train, {name: split}) arrays."""
  if dataset_info(config.input).family == 'cifar':
    return CifarData(config, preloaded)
  if preloaded is not None:
    raise ValueError('preloaded data is only supported for CIFAR datasets')
  return ImagenetData(config)
