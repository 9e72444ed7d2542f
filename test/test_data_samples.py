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

"""ChunkDataset: action chunks with end padding and masks, per-episode decode caching, block sampler."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ki_vla.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from ki_vla.data.normalize import Normalizer
from ki_vla.data.samples import ChunkDataset, EpisodeBlockSampler
from ki_vla.joints import JOINT_NAMES

CAMS = ["cam_high", "cam_right_wrist"]
LENGTHS = [7, 5, 9, 6]


def colour(ep: int, t: int, cam: int) -> tuple[int, int, int]:
    return (20 * t + 10, 40 * ep + 20, 60 * cam + 30)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> LeRobotDataset:
    root = tmp_path_factory.mktemp("samples") / "ds"
    w = LeRobotDatasetWriter.create(
        root, fps=50, camera_names=CAMS, image_shape=(32, 32, 3), state_names=JOINT_NAMES, action_names=JOINT_NAMES,
        vcodec="h264",
    )
    for e, n in enumerate(LENGTHS):
        frames = {cam: np.empty((n, 32, 32, 3), dtype=np.uint8) for cam in CAMS}
        for c, cam in enumerate(CAMS):
            for t in range(n):
                frames[cam][t] = colour(e, t, c)
        state = np.arange(n)[:, None] * 1.0 + e * 100 + np.arange(14)[None] * 0.01
        w.add_episode(frames, state, state + 0.5, f"task {e}")
    w.finalize()
    return LeRobotDataset(root)


def test_sample_contents_and_end_padding(dataset: LeRobotDataset) -> None:
    ds = ChunkDataset(dataset, horizon=4, image_size=(16, 8))
    assert len(ds) == sum(LENGTHS)
    s = ds[7 + 3]  # episode 1, frame 3 of 5
    assert s["instruction"] == "task 1" and s["episode_index"] == 1 and s["frame_index"] == 3
    assert s["state"].shape == (14,) and s["state"].dtype == torch.float32
    np.testing.assert_allclose(s["state"].numpy(), 103 + np.arange(14) * 0.01, rtol=1e-6)
    np.testing.assert_allclose(s["actions"][:, 0].numpy(), [103.5, 104.5, 104.5, 104.5])  # last action repeated
    assert s["action_is_pad"].tolist() == [False, False, True, True]
    assert s["action_mask"].tolist() == [True, True, False, False]
    assert set(s["images"]) == set(CAMS)
    img = s["images"]["cam_right_wrist"]
    assert img.shape == (16, 8, 3) and img.dtype == torch.uint8
    np.testing.assert_allclose(img.float().mean((0, 1)).numpy(), colour(1, 3, 1), atol=4)
    assert bool(s["image_mask"]["cam_high"])


def test_float_images_camera_subset_and_batches(dataset: LeRobotDataset) -> None:
    ds = ChunkDataset(dataset, horizon=3, camera_names=["cam_high"], float_images=True)
    batch = next(iter(DataLoader(ds, batch_size=5, sampler=EpisodeBlockSampler(ds, seed=1))))
    assert list(batch["images"]) == ["cam_high"]
    assert batch["images"]["cam_high"].shape == (5, 3, 32, 32) and batch["images"]["cam_high"].dtype == torch.float32
    assert float(batch["images"]["cam_high"].max()) <= 1.0
    assert batch["actions"].shape == (5, 3, 14) and batch["action_mask"].shape == (5, 3)
    assert len(batch["instruction"]) == 5
    with pytest.raises(ValueError, match="not in dataset"):
        ChunkDataset(dataset, horizon=3, camera_names=["cam_nope"])
    with pytest.raises(ValueError, match="horizon"):
        ChunkDataset(dataset, horizon=0)


def test_each_episode_decoded_once_per_epoch_with_block_sampler(dataset: LeRobotDataset) -> None:
    ds = ChunkDataset(dataset, horizon=2, cache_episodes=2)
    sampler = EpisodeBlockSampler(ds, seed=3, episodes_per_block=2)
    order = list(sampler)
    assert sorted(order) == list(range(len(ds)))  # a permutation
    assert order == list(EpisodeBlockSampler(ds, seed=3, episodes_per_block=2))  # deterministic
    sampler.set_epoch(1)
    assert list(sampler) != order
    for i in order:
        ds[i]
    assert ds.decode_count == len(LENGTHS)
    # Uniform random access over more episodes than the cache holds decodes far more often.
    ds2 = ChunkDataset(dataset, horizon=2, cache_episodes=1)
    for i in np.random.default_rng(0).permutation(len(ds2)):
        ds2[int(i)]
    assert ds2.decode_count > len(LENGTHS)


def test_action_chunks_and_normalizer_from_dataset(dataset: LeRobotDataset) -> None:
    ds = ChunkDataset(dataset, horizon=4)
    chunks = ds.all_action_chunks()
    assert chunks.shape == (sum(LENGTHS), 4, 14)
    np.testing.assert_allclose(chunks[7 + 3], ds[10]["actions"].numpy())
    norm = Normalizer.from_dataset(dataset)
    y = norm.normalize("action", chunks)
    # q01 -> -1, q99 -> +1 and nothing clipped: the extremes land just outside and invert exactly
    assert y.min() < -1 and y.max() > 1 and y.min() > -1.1 and y.max() < 1.1
    np.testing.assert_allclose(norm.unnormalize("action", y), chunks, rtol=0, atol=1e-4)  # float32, values up to ~300
    assert np.isclose(np.quantile(dataset.column("action")[:, 0], 0.99), norm.unnormalize("action", np.ones(14))[0])


def test_default_cache_holds_every_episode_so_batches_mix_episodes(dataset: LeRobotDataset) -> None:
    """The default (cache every episode) shuffles globally: one decode per episode, and the first batches draw
    from most episodes (with the old 4-episode blocks a batch came from at most one block)."""
    ds = ChunkDataset(dataset, horizon=2)
    assert ds.cache_episodes == len(LENGTHS)
    order = ds.block_order(seed=0)
    assert sorted(order) == list(range(len(ds)))
    first = [ds.locate(i)[0] for i in order[:8]]
    assert len(set(first)) >= 3
    for i in order:
        ds[i]
    assert ds.decode_count == len(LENGTHS)
    blocks = ChunkDataset(dataset, horizon=2, cache_episodes=1).block_order(seed=0)
    assert len({ds.locate(i)[0] for i in blocks[:5]}) == 1  # the small-cache mode still reads one block at a time
