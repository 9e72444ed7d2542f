# Copyright 2026 ki_vla_ros maintainers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Training-time image augmentation on model-ready batches (B, N_cam, 3, S, S) in [-1, 1], on the training device.

Why: with a few dozen demonstrations every cube position is seen in a handful of scenes, and a from-scratch
vision tower can key on the exact pixels of each. A random shift of a few pixels (DrQ, diffusion policy's random
crop), a small rotation and colour jitter (openpi's pi0.5 recipe: crop, +-5 degrees, brightness / contrast /
saturation) make the features depend on where things are relative to each other and not on one lighting.
Nothing is augmented at inference or validation.

Written with `affine_grid` / `grid_sample` and tensor ops rather than torchvision's per-image transforms so that a
whole batch is transformed in one call on the GPU, every sample and camera drawn independently, from a CPU
generator (the same draws on any device; the trainer seeds it by step, so resume stays exact).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageAugment:
    """shift: pixels (at the model's resolution) on each axis; rotate: degrees either way; color: the relative
    range of the brightness, contrast and saturation factors (0.2 draws each in [0.8, 1.2])."""

    shift: int = 0
    rotate: float = 0.0
    color: float = 0.0

    def __post_init__(self) -> None:
        if self.shift < 0 or self.rotate < 0 or not 0 <= self.color < 1:
            raise ValueError(f"augmentation needs shift >= 0, rotate >= 0 and 0 <= color < 1, got {self}")

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.rotate > 0 or self.color > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.active:
            return images
        if images.ndim != 5 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"expected (B, N_cam, C, S, S) images, got {tuple(images.shape)}")
        b, n, c, s, _ = images.shape
        x = images.reshape(b * n, c, s, s).float()
        if self.shift > 0 or self.rotate > 0:
            x = self._geometric(x, generator)
        if self.color > 0:
            x = self._color(x, generator)
        return x.to(images.dtype).reshape(b, n, c, s, s)

    def _uniform(self, shape: tuple[int, ...], half_range: float, generator: torch.Generator | None) -> torch.Tensor:
        return (torch.rand(shape, generator=generator) * 2 - 1) * half_range

    def _geometric(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        m, s = x.shape[0], x.shape[-1]
        # Whole-pixel shifts; with align_corners=True one pixel is 2 / (S - 1) in grid units, so a pure shift
        # samples pixel centres exactly (nearest, no blur). A rotation resamples (bilinear).
        shifts = torch.randint(-self.shift, self.shift + 1, (m, 2), generator=generator).float() * (2.0 / (s - 1))
        angle = self._uniform((m,), math.radians(self.rotate), generator)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shifts[:, 0]], 1), torch.stack([sin, cos, shifts[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=True)
        # Border padding: the uncovered strip repeats the edge (a camera nudged sideways), not black bars.
        return F.grid_sample(x, grid, mode="bilinear" if self.rotate > 0 else "nearest", padding_mode="border",
                             align_corners=True)

    def _color(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        m = x.shape[0]
        factors = (1.0 + self._uniform((3, m, 1, 1, 1), self.color, generator)).to(x.device)
        rgb = (x + 1.0) / 2.0
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)  # ITU-R 601 luma
        rgb = (rgb * factors[0]).clamp(0, 1)                                         # brightness
        mean = (rgb * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        rgb = ((rgb - mean) * factors[1] + mean).clamp(0, 1)                         # contrast
        gray = (rgb * weights).sum(1, keepdim=True)
        rgb = ((rgb - gray) * factors[2] + gray).clamp(0, 1)                         # saturation
        return rgb * 2.0 - 1.0
