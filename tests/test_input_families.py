"""One source per fact: a config's input family (`config_lib.family`), a
net's (`config_lib.model_family`), and the evaluation view that prediction
asks of the family's dataset class (`data.Dataset.eval_view`)."""

import io
import json

import cv2
import numpy as np
import PIL.Image
import pytest

from resnet_jax import config_lib, config_validation, data, errors, experiment, models
from resnet_jax.data import catalog, imagenet, imagenet_views
from resnet_jax.tools import benchmark

RECIPES = (config_lib.cifar10, config_lib.imagenet, config_lib.imagenette)


def _jpeg(h: int, w: int) -> bytes:
  rng = np.random.default_rng(0)
  image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h))
  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, 'JPEG', quality=90)
  return out.getvalue()


def test_every_family_has_a_recipe_and_a_pipeline():
  assert set(config_lib.RECIPES) == set(data.DATASETS) == set(catalog.FAMILIES)


@pytest.mark.parametrize('recipe', RECIPES, ids=lambda r: r.__name__)
def test_a_recipe_saved_by_any_version_is_of_its_family(recipe):
  config = recipe()
  assert config_lib.family(config) == config.input.family
  saved = json.loads(config.to_json())
  assert config_lib.family(saved) == config.input.family
  del saved['input']['family']  # As written before `input.family` existed.
  assert config_lib.family(saved) == config.input.family
  assert config_lib.from_saved(saved).input.family == config.input.family


def test_training_image_shape_follows_the_family():
  assert experiment.train_image_shape(config_lib.cifar10()) == (32, 32, 3)
  config = config_lib.imagenet()
  config.input.image_size = 160
  assert experiment.train_image_shape(config) == (160, 160, 3)


@pytest.mark.parametrize('model', models.list_models())
def test_every_net_has_the_recipe_of_its_family(model):
  config = config_lib.recipe(model)
  assert config.model == model
  assert config_lib.family(config) == config_lib.model_family(model)
  assert benchmark.recipe(model).to_dict() == config.to_dict()


@pytest.mark.parametrize(
  'option,value',
  [
    ('shortcut', 'D'),
    ('bn_group_size', 0),
    ('bn_momentum', 1.5),
    ('bn_epsilon', -1.0),
    ('num_classes', 0),
  ],
)
def test_config_validation_runs_the_models_option_checks(option, value):
  with pytest.raises(errors.ConfigError) as from_models:
    models.create_model('cifar_resnet20', **{option: value})
  config = config_lib.cifar10()
  config.model_options[option] = value
  with pytest.raises(errors.ConfigError) as from_config:
    config_validation.validate(config, num_devices=1)
  assert str(from_config.value) == f'bad config: model_options.{from_models.value}'


def test_imagenet_eval_view_is_the_evaluation_pipelines():
  config = config_lib.imagenet()
  config.eval.resize_size, config.eval.crop_size = 72, 64
  view = data.ImagenetData.eval_view(config, {'mean': (3,), 'std': (3,)})
  assert view.shape == (64, 64, 3)
  # Decoded at a quarter of its size (shorter side 75 >= 72): the DCT path.
  jpeg = _jpeg(300, 400)
  batches = imagenet.eval_dataset(
    [{'image': jpeg, 'label': 0}], view='center', local_batch_size=1, resize_size=72, crop_size=64
  )
  np.testing.assert_array_equal(view.of_encoded(jpeg), next(iter(batches))['image'][0, 0])
  image = imagenet_views.decode(jpeg)
  np.testing.assert_array_equal(view.of_array(image), imagenet_views.center_view(image, 72, 64))


def test_cifar_eval_view_has_the_training_size():
  config = config_lib.cifar10()
  view = data.CifarData.eval_view(config, {'mean': (8, 12, 3), 'std': (3,)})
  assert view.shape == (8, 12, 3)
  image = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
  assert view.of_array(image) is image
  large = cv2.resize(image, (48, 32))
  np.testing.assert_array_equal(
    view.of_array(large), cv2.resize(large, (12, 8), interpolation=cv2.INTER_AREA)
  )
  png = io.BytesIO()
  PIL.Image.fromarray(image).save(png, 'PNG')
  np.testing.assert_array_equal(view.of_encoded(png.getvalue()), image)
  per_channel = data.CifarData.eval_view(config, {'mean': (3,), 'std': (3,)})
  assert per_channel.shape == experiment.train_image_shape(config)
