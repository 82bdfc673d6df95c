"""Input pipelines: what a dataset is (`catalog`, from its own metadata), the
interface the loop calls (`core`), one module per family, and image folders
(`folder`).

`create(config)` returns the family's `core.Dataset` (`DATASETS`):
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
  'DATASETS',
  'ImagenetData',
  'catalog',
  'check_dataset',
  'create',
  'dataset_info',
]


DATASETS = {'cifar': CifarData, 'imagenet': ImagenetData}  # Input family -> its pipeline.


def create(config: ml_collections.ConfigDict, preloaded=None) -> Dataset:
  """The config's dataset. `preloaded` (CIFAR only): (train, {name: split}) arrays."""
  dataset = DATASETS[dataset_info(config.input).family]
  if preloaded is None:
    return dataset(config)
  if dataset is not CifarData:
    raise ValueError('preloaded data is only supported for CIFAR datasets')
  return dataset(config, preloaded)
