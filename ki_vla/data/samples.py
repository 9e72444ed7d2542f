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

"""Training samples from a `LeRobotDataset`: cameras, state, the next `horizon` actions and the instruction.

Decoding video is the cost, so each episode is decoded once (all its frames, resized to `image_size`) and kept
in a per-process LRU cache; a sample is then an array lookup. By default the cache holds every episode (at model
resolution a 50-episode, 3-camera dataset is well under a gigabyte at 64x64), so the shuffle is global and a batch
mixes as many episodes as it has samples. With a smaller cache (`cache_episodes`, for datasets that do not fit),
`EpisodeBlockSampler` (and `ChunkDataset.block_order`) shuffle *blocks* of that many episodes and the frames
inside each block, so every episode is decoded once per epoch; such batches come from one block only.

Sample dict (one index = one frame t of one episode):
    images        {cam: uint8 tensor (H, W, 3)} (or float (3, H, W) in [0, 1] with `float_images=True`)
    image_mask    {cam: bool tensor ()}  True for real camera images
    state         float32 (D_s,)         state at t, real units
    actions       float32 (horizon, D_a) actions t .. t+horizon-1, real units; past the episode end the
                                          last action is repeated
    action_is_pad bool (horizon,)        True where the action was padding
    action_mask   bool (horizon,)        ~action_is_pad (the loss weights)
    instruction   str
    episode_index int, frame_index int
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ki_vla.data.images import resize_for_model
from ki_vla.data.lerobot import ACTION_KEY, STATE_KEY, LeRobotDataset


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None, mode: str = "stretch") -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) with `ki_vla.data.images.resize_for_model` (the camera node's resize,
    so a model sees training frames exactly as it will see live ones); no-op when already that size."""
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    return np.stack([resize_for_model(f, tuple(size), mode) for f in frames])


class ChunkDataset(Dataset):
    """Map-style dataset of action-chunk training samples over every frame of every episode."""

    def __init__(
        self,
        ds: LeRobotDataset,
        horizon: int,
        camera_names: Sequence[str] | None = None,
        image_size: tuple[int, int] | None = None,
        float_images: bool = False,
        cache_episodes: int | None = None,
        resize_mode: str = "stretch",
        episodes: Sequence[int] | None = None,
    ) -> None:
        """episodes: the dataset's episode positions to serve (default all), e.g. a training / validation split;
        this dataset's own episode positions (`locate`, `episode_range`) number them 0.. in that order."""
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self._eps = list(range(ds.num_episodes)) if episodes is None else [int(e) for e in episodes]
        if (not self._eps or any(not 0 <= e < ds.num_episodes for e in self._eps)
                or len(set(self._eps)) != len(self._eps)):
            raise ValueError(f"episodes must be distinct positions in [0, {ds.num_episodes}), got {episodes}")
        if cache_episodes is None:
            cache_episodes = len(self._eps)
        if cache_episodes < 1:
            raise ValueError(f"cache_episodes must be >= 1, got {cache_episodes}")
        self.ds = ds
        self.horizon = int(horizon)
        self.camera_names = list(ds.camera_names if camera_names is None else camera_names)
        unknown = [c for c in self.camera_names if c not in ds.camera_names]
        if unknown:
            raise ValueError(f"camera(s) {unknown} not in dataset {ds.root} (it has {ds.camera_names})")
        if image_size is None and self.camera_names and ds.image_shape:
            image_size = (int(ds.image_shape[0]), int(ds.image_shape[1]))
        self.image_size = tuple(image_size) if image_size is not None else None
        self.float_images = float_images
        self.resize_mode = resize_mode
        self.cache_episodes = int(cache_episodes)
        self.state_dim = int(ds.column(STATE_KEY).shape[1])
        self.action_dim = int(ds.column(ACTION_KEY).shape[1])
        self._starts = np.cumsum([0, *(ds.episode_lengths[e] for e in self._eps)]).tolist()
        self._episode_indices = [ds.episode_indices[e] for e in self._eps]
        self._tasks = [ds.episode_task(e) for e in self._eps]
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.decode_count = 0  # episodes decoded so far (cache misses): observable for tests and tuning

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_episodes(self) -> int:
        return len(self._eps)

    def locate(self, index: int) -> tuple[int, int]:
        """(episode position, frame) of a flat sample index."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        ep = bisect.bisect_right(self._starts, index) - 1
        return ep, index - self._starts[ep]

    def episode_range(self, ep: int) -> range:
        """Flat sample indices of episode position `ep`."""
        return range(self._starts[ep], self._starts[ep + 1])

    def _episode_images(self, ep: int) -> dict[str, np.ndarray]:
        if ep in self._cache:
            self._cache.move_to_end(ep)
            return self._cache[ep]
        data = self.ds.episode(self._eps[ep], cameras=self.camera_names) if self.camera_names else {"images": {}}
        images = {cam: np.ascontiguousarray(resize_frames(data["images"][cam], self.image_size, self.resize_mode))
                  for cam in self.camera_names}
        self.decode_count += 1
        self._cache[ep] = images
        while len(self._cache) > self.cache_episodes:
            self._cache.popitem(last=False)
        return images

    def __getitem__(self, index: int) -> dict[str, Any]:
        ep, t = self.locate(int(index))
        start, stop = self.ds.episode_rows(self._eps[ep])
        length = stop - start
        actions_all = self.ds.column(ACTION_KEY)
        idx = np.minimum(np.arange(t, t + self.horizon), length - 1)
        is_pad = np.arange(t, t + self.horizon) >= length
        images = self._episode_images(ep)
        out_images: dict[str, torch.Tensor] = {}
        for cam in self.camera_names:
            img = torch.from_numpy(images[cam][t].copy())
            if self.float_images:
                img = img.permute(2, 0, 1).float().div_(255.0)
            out_images[cam] = img
        return {
            "images": out_images,
            "image_mask": {cam: torch.tensor(True) for cam in self.camera_names},
            "state": torch.from_numpy(self.ds.column(STATE_KEY)[start + t].astype(np.float32)),
            "actions": torch.from_numpy(actions_all[start + idx].astype(np.float32)),
            "action_is_pad": torch.from_numpy(is_pad),
            "action_mask": torch.from_numpy(~is_pad),
            "instruction": self._tasks[ep],
            "episode_index": int(self._episode_indices[ep]),
            "frame_index": int(t),
        }

    def all_action_chunks(self, stride: int = 1) -> np.ndarray:
        """(N, horizon, D_a) action chunks (end-padded) without touching images, e.g. to fit a tokenizer."""
        actions = self.ds.column(ACTION_KEY)
        chunks = []
        for ep in self._eps:
            start, stop = self.ds.episode_rows(ep)
            for t in range(0, stop - start, stride):
                idx = np.minimum(np.arange(t, t + self.horizon), stop - start - 1)
                chunks.append(actions[start + idx])
        return np.stack(chunks).astype(np.float32)

    def chunk_states(self, stride: int = 1) -> np.ndarray:
        """(N, D_s) the state each of `all_action_chunks(stride)`'s chunks starts from (what delta actions are
        relative to)."""
        states = self.ds.column(STATE_KEY)
        rows = [start + t for ep in self._eps for start, stop in [self.ds.episode_rows(ep)]
                for t in range(0, stop - start, stride)]
        return np.asarray(states[rows], np.float32)

    def block_order(self, seed: int, epoch: int = 0, episodes_per_block: int | None = None,
                    start_frames: int = 0, start_repeat: int = 1) -> list[int]:
        """A cache-friendly shuffled permutation of all sample indices (see the module docstring), in which the
        first `start_frames` frames of every episode appear `start_repeat` times (train config `start_frames`):
        the frames before the arm moves are the only ones whose chunk must come from the images alone."""
        if start_frames < 0 or start_repeat < 1:
            raise ValueError(f"start_frames must be >= 0 and start_repeat >= 1, got {start_frames}, {start_repeat}")
        k = episodes_per_block or self.cache_episodes
        rng = np.random.default_rng([int(seed), int(epoch)])
        episodes = rng.permutation(self.num_episodes)
        order: list[int] = []
        for b in range(0, len(episodes), k):
            parts = []
            for e in episodes[b:b + k]:
                frames = np.asarray(self.episode_range(int(e)))
                parts += [frames] + [frames[:start_frames]] * (start_repeat - 1)
            order.extend(rng.permutation(np.concatenate(parts)).tolist())
        return order


class EpisodeBlockSampler(Sampler[int]):
    """Shuffles blocks of `episodes_per_block` episodes, then frames within a block; deterministic per
    (seed, epoch). Keep `episodes_per_block` <= the dataset's `cache_episodes` so each episode is decoded once
    per epoch. Call `set_epoch` between epochs for a new order."""

    def __init__(self, dataset: ChunkDataset, seed: int = 0, episodes_per_block: int | None = None) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.episodes_per_block = episodes_per_block
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self.dataset.block_order(self.seed, self.epoch, self.episodes_per_block))

    def __len__(self) -> int:
        return len(self.dataset)
