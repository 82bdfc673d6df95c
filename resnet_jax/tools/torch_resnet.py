"""An independent PyTorch definition of the paper's CIFAR nets and their
train step, the peer that `tools.peer_benchmark` times beside ours.

Written from the paper (section 4.2), not from this package: a 3x3 conv of 16
filters, three stages of n basic blocks (16, 32, 64 filters, stride 2 at the
first block of stages 2 and 3), option A shortcuts (subsample, zero-pad the
new channels after the old ones), global average pool, fc. SGD with momentum
and the L2 weight decay added to the gradient (`torch.optim.SGD`), the
section 4.2 augmentation (4-pixel zero padding, random 32x32 crop, random
flip) on the batch tensor, as our step does on the device. channels_last, as
PyTorch advises for convolutions on CPUs. Needs the `torch` extra.
"""

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.stride = stride
    self.extra = planes - in_planes

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
    if self.extra:
      shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
    return F.relu(y + shortcut)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 images, NCHW in, logits out."""

  def __init__(self, n: int, num_classes: int = 10):
    super().__init__()
    self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(16)
    blocks, in_planes = [], 16
    for stage, planes in enumerate((16, 32, 64)):
      for i in range(n):
        blocks.append(BasicBlock(in_planes, planes, 2 if stage and not i else 1))
        in_planes = planes
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(64, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')

  def forward(self, x):
    x = self.blocks(F.relu(self.bn(self.conv(x))))
    return self.fc(x.mean((2, 3)))


def depth_to_n(model_name: str) -> int:
  """'cifar_resnet56' -> n = 9 (depth 6n+2)."""
  prefix = 'cifar_resnet'
  if not model_name.startswith(prefix):
    raise ValueError(f'the PyTorch peer defines the CIFAR residual nets only, not {model_name!r}')
  return (int(model_name[len(prefix) :]) - 2) // 6


def augment(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
  """Zero padding, a random crop and a random flip per image (NCHW)."""
  b, _, h, w = images.shape
  padded = F.pad(images, (pad, pad, pad, pad))
  rows = torch.randint(0, 2 * pad + 1, (b, 1, 1)) + torch.arange(h).view(1, h, 1)
  cols = torch.randint(0, 2 * pad + 1, (b, 1, 1)) + torch.arange(w).view(1, 1, w)
  flips = torch.rand(b) < 0.5
  cols = torch.where(flips.view(b, 1, 1), cols.flip(2), cols)
  index = torch.arange(b).view(b, 1, 1)
  crops = padded.permute(0, 2, 3, 1)[index, rows, cols]  # (B, H, W, C)
  return crops.permute(0, 3, 1, 2)


class TrainStep:
  """One SGD step of the net on a uint8 NHWC batch, as our train step takes it."""

  def __init__(self, model_name: str, lr=0.1, momentum=0.9, weight_decay=1e-4):
    self.model = CifarResNet(depth_to_n(model_name)).to(memory_format=torch.channels_last)
    self.optimizer = torch.optim.SGD(
      self.model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    self.mean = torch.full((1, 3, 1, 1), 120.0)

  def _inputs(self, images_uint8: torch.Tensor) -> torch.Tensor:
    x = images_uint8.permute(0, 3, 1, 2).float() - self.mean
    return augment(x).contiguous(memory_format=torch.channels_last)

  def __call__(self, images_uint8: torch.Tensor, labels: torch.Tensor) -> float:
    self.model.train()
    loss = F.cross_entropy(self.model(self._inputs(images_uint8)), labels)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss.detach()

  @torch.inference_mode()
  def evaluate(self, images_uint8: torch.Tensor) -> torch.Tensor:
    """Logits of the unaugmented images, BN with its running statistics."""
    self.model.eval()
    x = images_uint8.permute(0, 3, 1, 2).float() - self.mean
    return self.model(x.contiguous(memory_format=torch.channels_last))
