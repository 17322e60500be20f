"""Image observations: the convolutional encoder in front of each network, and random-crop augmentation.

Reference: OGBench's own implementations (seohongpark/ogbench, ``impls/utils/encoders.py`` ``impala_small``,
``impls/utils/datasets.py`` ``augment``, ``impls/agents/*.py``), which its visual tasks and the offline-to-online
work on them (seohongpark/fql) use:

- ``impala_small``: per stack of widths (16, 32, 32), a 3x3 convolution, a 3x3 max-pool of stride 2 ('SAME'
  padding, as TensorFlow places it) and one residual block (ReLU, conv, ReLU, conv, plus the input); then ReLU,
  flatten and a 512-unit GELU layer. Frames enter as uint8 and are divided by 255 inside. Xavier-uniform weights,
  zero biases (flax's defaults there). No dropout, no LayerNorm (their defaults).
- Every network has its own encoder (OGBench's agents build one per module; COG's CNNs are separate too): the
  critic ensemble shares one (OGBench's GCValue encodes once, then the ensemble of MLPs), the actor has its own,
  a target critic its own Polyak-averaged copy. Each encoder learns from its own network's loss only: the actor's
  loss reads the critic with its weights detached (``detach_weights``), and that covers the critic's encoder.
- Augmentation: with probability ``augment_probability`` (OGBench's ``p_aug``, 0.5 in its visual runs) the whole
  batch is randomly cropped back to its size after padding ``augment_pad`` pixels (3) by repeating the edge; each
  sample draws its own offset, and its observation and next observation share it. Training batches only: acting,
  evaluation and the calibration probe see frames as they are.
- Frame stacking: none. OGBench's reference runs for its visual tasks do not stack frames (its
  ``impls/hyperparameters.sh``); FQL's visual offline runs stack 3, a choice this project does not offer yet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from o2o.config import EncoderConfig


@dataclass(frozen=True)
class PixelObservation:
    """What an agent is built for when observations are images: their (height, width, channels) shape, uint8,
    and the encoder that turns them into features. Passed to an agent in place of ``obs_dim``."""

    shape: tuple[int, int, int]
    encoder: EncoderConfig

    @property
    def flat_dim(self) -> int:
        return math.prod(self.shape)

    @property
    def features(self) -> int:
        return self.encoder.mlp_hidden[-1] if self.encoder.mlp_hidden else ImpalaEncoder.conv_features(self)


def _same_pool_padding(size: int, window: int = 3, stride: int = 2) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding of one axis (the smaller half first)."""
    total = max((math.ceil(size / stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def same_max_pool(x: torch.Tensor) -> torch.Tensor:
    """flax's ``nn.max_pool(window (3, 3), strides (2, 2), padding='SAME')`` on (B, C, H, W): -inf padding placed
    as TensorFlow places it (the larger half after), not PyTorch's symmetric padding."""
    top, bottom = _same_pool_padding(x.shape[2])
    left, right = _same_pool_padding(x.shape[3])
    return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), 3, 2)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ImpalaEncoder(nn.Module):
    """uint8 frames, flattened (B, H * W * C) or not (B, H, W, C) -> features (B, F)."""

    def __init__(self, spec: PixelObservation):
        super().__init__()
        cfg = spec.encoder
        self.shape = spec.shape
        height, width, channels = spec.shape
        stacks = []
        for size in cfg.stack_sizes:
            stacks.append(nn.ModuleDict({"conv": nn.Conv2d(channels, size, 3, padding=1),
                                         "blocks": nn.Sequential(*(ResidualBlock(size) for _ in range(cfg.num_blocks)))}))
            channels = size
        self.stacks = nn.ModuleList(stacks)
        widths = [self.conv_features(spec), *cfg.mlp_hidden]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def conv_features(spec: PixelObservation) -> int:
        height, width, _ = spec.shape
        for _ in spec.encoder.stack_sizes:
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        return height * width * spec.encoder.stack_sizes[-1]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.reshape(-1, *self.shape).permute(0, 3, 1, 2).float() / 255.0  # (B, C, H, W)
        for stack in self.stacks:
            x = stack["blocks"](same_max_pool(stack["conv"](x)))
        x = F.relu(x).permute(0, 2, 3, 1).flatten(1)  # flattened as flax does (H, W, C)
        for layer in self.mlp:
            x = F.gelu(layer(x), approximate="tanh")  # flax's nn.gelu is the tanh approximation by default
        return x


ENCODERS = {"impala_small": ImpalaEncoder}


def make_encoder(spec: PixelObservation) -> nn.Module:
    return ENCODERS[spec.encoder.name](spec)


class Encoded(nn.Module):
    """A network (an actor, a critic ensemble, a value function) behind its own image encoder: it takes frames
    wherever the network took observations. ``detach_weights=True`` (the actor's loss reading a critic) reads the
    encoder without its gradients too. Every other attribute is the network's, so an agent uses it as the
    network."""

    def __init__(self, encoder: nn.Module, net: nn.Module):
        super().__init__()
        self.encoder, self.net = encoder, net

    def encode(self, obs: torch.Tensor, detach: bool = False) -> torch.Tensor:
        if detach:
            with torch.no_grad():
                return self.encoder(obs)
        return self.encoder(obs)

    def forward(self, obs: torch.Tensor, *args, **kwargs):
        return self.net(self.encode(obs, kwargs.get("detach_weights", False)), *args, **kwargs)

    def act(self, obs: torch.Tensor, deterministic: bool, eps: torch.Tensor | None) -> torch.Tensor:
        return self.net.act(self.encode(obs), deterministic, eps)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["net"], name)


def random_crop(frames: torch.Tensor, shape: tuple[int, int, int], offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Each frame (flattened, (B, H * W * C) uint8) padded by ``pad`` pixels that repeat its edge, then cropped back
    to (H, W) at its own ``offsets`` (B, 2) (row, column, each in [0, 2 * pad])."""
    height, width, channels = shape
    x = frames.reshape(-1, height, width, channels)
    rows = (torch.arange(height, device=frames.device) + offsets[:, :1] - pad).clamp(0, height - 1)  # (B, H)
    cols = (torch.arange(width, device=frames.device) + offsets[:, 1:] - pad).clamp(0, width - 1)  # (B, W)
    batch = torch.arange(len(x), device=frames.device)[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]].reshape(frames.shape)


def augment(batch, spec: PixelObservation, generator: torch.Generator | None = None):
    """OGBench's training-batch augmentation (module docstring): with probability ``augment_probability`` the whole
    batch, each sample's observation and next observation cropped at one offset of its own. ``generator``: a CPU
    generator for the coin (no device sync); the offsets come from the device's own stream."""
    cfg = spec.encoder
    device = batch.obs.device
    if not cfg.augment_probability or not cfg.augment_pad:
        return batch
    if torch.rand((), generator=generator).item() >= cfg.augment_probability:  # drawn on the CPU: no device sync
        return batch
    offsets = torch.randint(0, 2 * cfg.augment_pad + 1, (len(batch.obs), 2), device=device)
    return batch._replace(obs=random_crop(batch.obs, spec.shape, offsets, cfg.augment_pad),
                          next_obs=random_crop(batch.next_obs, spec.shape, offsets, cfg.augment_pad))
