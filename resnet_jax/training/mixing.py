"""mixup and CutMix of a training batch, on the device inside the train step.

As torchvision's reference recipe (`RandomMixup`, `RandomCutmix`, chosen at
random per batch): each image is mixed with its neighbour in the batch
(the batch rolled by one, so a sharded batch exchanges one image per device,
not the batch), with one mixing weight lambda and, for CutMix, one box for the
whole batch. The targets become the same mixture of the two one-hot labels,
weighted by the pixels each image contributes.

- mixup (Zhang et al. 2018): x = lambda x_i + (1 - lambda) x_j, lambda ~
  Beta(alpha, alpha).
- CutMix (Yun et al. 2019): a box of x_j pasted into x_i, its centre uniform
  over the image and its sides sqrt(1 - lambda) of the image's (clipped at
  the border); lambda is then recomputed from the clipped box's area.
"""

import jax
import jax.numpy as jnp
import ml_collections


def is_on(mixing: ml_collections.ConfigDict) -> bool:
  return bool(mixing.mixup_alpha or mixing.cutmix_alpha)


def mixup(images, lam):
  """Each image blended with its neighbour: lam of itself, 1 - lam of the other."""
  return lam * images + (1 - lam) * jnp.roll(images, 1, axis=0)


def cutmix_box(rng, lam, height: int, width: int):
  """torchvision's CutMix box (y0, y1, x0, x1) for mixing weight `lam`, and
  the weight that its clipped area leaves to the image itself."""
  y_rng, x_rng = jax.random.split(rng)
  cy = jax.random.randint(y_rng, (), 0, height)
  cx = jax.random.randint(x_rng, (), 0, width)
  ratio = 0.5 * jnp.sqrt(1.0 - lam)
  half_h = (ratio * height).astype(jnp.int32)
  half_w = (ratio * width).astype(jnp.int32)
  y0, y1 = jnp.maximum(cy - half_h, 0), jnp.minimum(cy + half_h, height)
  x0, x1 = jnp.maximum(cx - half_w, 0), jnp.minimum(cx + half_w, width)
  kept = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  return (y0, y1, x0, x1), kept


def cutmix(images, box):
  """The neighbour's pixels inside `box` (y0, y1, x0, x1), the image's elsewhere."""
  y0, y1, x0, x1 = box
  _, h, w, _ = images.shape
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  return jnp.where(inside[None, :, :, None], jnp.roll(images, 1, axis=0), images)


def mixed_targets(labels, num_classes: int, lam):
  """lam of each label's one-hot and 1 - lam of its neighbour's."""
  one_hot = jax.nn.one_hot(labels, num_classes)
  return lam * one_hot + (1 - lam) * jnp.roll(one_hot, 1, axis=0)


def mix(rng, images, labels, num_classes: int, mixing: ml_collections.ConfigDict):
  """(mixed images, soft targets (B, num_classes)) of one batch.

  Args:
    rng: this step's key.
    images: (B, H, W, C) normalised, augmented training images.
    labels: (B,) integer labels.
    num_classes: the model's outputs.
    mixing: `config.mixing` (mixup_alpha, cutmix_alpha, cutmix_probability).

  Returns:
    Images of the input's shape and dtype, and float32 targets whose rows sum to 1.
  """
  choice_rng, lam_rng, box_rng = jax.random.split(rng, 3)
  if not mixing.cutmix_alpha:
    use_cutmix = jnp.asarray(False)
  elif not mixing.mixup_alpha:
    use_cutmix = jnp.asarray(True)
  else:
    use_cutmix = jax.random.bernoulli(choice_rng, mixing.cutmix_probability)
  # Beta(0, 0) is undefined: an alpha that is off gets a placeholder never used.
  alpha = jnp.where(use_cutmix, mixing.cutmix_alpha or 1.0, mixing.mixup_alpha or 1.0)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  box, kept = cutmix_box(box_rng, lam, images.shape[1], images.shape[2])
  mixed = jnp.where(use_cutmix, cutmix(images, box), mixup(images, lam.astype(images.dtype)))
  lam = jnp.where(use_cutmix, kept, lam)
  return mixed, mixed_targets(labels, num_classes, lam)
