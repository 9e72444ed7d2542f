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

import numpy as np
import pytest
import torch

from ki_vla.train.augment import ImageAugment


def _reference_shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(C, S, S) shifted so that out[y, x] = img[y + dy, x + dx], border pixels repeated."""
    s = img.shape[-1]
    pad = max(abs(dy), abs(dx))
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return padded[:, pad + dy: pad + dy + s, pad + dx: pad + dx + s]


def test_shift_is_a_whole_pixel_translation_with_repeated_borders():
    images = torch.rand(3, 2, 3, 16, 16) * 2 - 1
    out = ImageAugment(shift=3)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    moved = 0
    for b in range(3):
        for n in range(2):
            src, got = images[b, n].numpy(), out[b, n].numpy()
            matches = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
                       if np.array_equal(_reference_shift(src, dy, dx), got)]
            assert len(matches) == 1, f"sample {b} camera {n} is not one shift of its input"
            moved += matches[0] != (0, 0)
    assert moved >= 4  # independent draws per sample and camera, not one shift for the batch


def test_rotation_turns_the_image_about_its_centre():
    yy, xx = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    r = ((yy - 16) ** 2 + (xx - 16) ** 2).sqrt()
    disk = torch.where(r < 10, 1.0, -1.0).expand(1, 1, 3, 33, 33)   # unchanged by any turn about the centre
    half = torch.where(yy < 16, 1.0, -1.0).expand(1, 1, 3, 33, 33)  # a horizon: tilts with the turn
    aug = ImageAugment(rotate=45.0)                                   # seed 0 draws about -37 degrees
    assert (aug(disk, torch.Generator().manual_seed(0)) - disk).abs().mean() < 0.1   # rim pixels resampled only
    assert (aug(half, torch.Generator().manual_seed(0)) - half).abs().mean() > 0.3


def test_color_jitter_keeps_range_and_changes_only_colours():
    images = torch.rand(4, 3, 3, 8, 8) * 2 - 1
    out = ImageAugment(color=0.4)(images, torch.Generator().manual_seed(1))
    assert out.min() >= -1.0 and out.max() <= 1.0 and not torch.allclose(out, images)
    flat = -torch.ones(1, 1, 3, 8, 8) * 0.2          # a uniform grey image has nothing to shift or rotate
    assert torch.allclose(ImageAugment(shift=2, rotate=5.0)(flat, torch.Generator().manual_seed(0)), flat, atol=1e-6)


def test_augment_is_reproducible_validated_and_off_by_default():
    images = torch.rand(2, 3, 3, 8, 8)
    aug = ImageAugment(shift=2, rotate=5.0, color=0.2)
    assert torch.equal(aug(images, torch.Generator().manual_seed(5)), aug(images, torch.Generator().manual_seed(5)))
    assert ImageAugment()(images) is images and not ImageAugment().active
    with pytest.raises(ValueError, match="shift"):
        ImageAugment(shift=-1)
    with pytest.raises(ValueError, match="color"):
        ImageAugment(color=1.5)
    with pytest.raises(ValueError, match="N_cam"):
        aug(images[0])
