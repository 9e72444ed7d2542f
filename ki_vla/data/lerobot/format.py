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

"""The LeRobot dataset format on local disk: paths, keys and the column helpers reader and writer share.

Layouts (as in huggingface/lerobot `datasets/utils.py`):

v3.0 (written here)::

    meta/info.json            codebase_version "v3.0", fps, features, data_path, video_path, totals
    meta/stats.json           {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
    meta/tasks.parquet        task strings (pandas index "task") -> column task_index
    meta/episodes/chunk-000/file-000.parquet
                              one row per episode: episode_index, tasks, length, data/chunk_index,
                              data/file_index, dataset_from_index, dataset_to_index,
                              videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp},
                              meta/episodes/{chunk_index,file_index}, stats/<feature>/<stat>
    data/chunk-000/file-000.parquet
                              one row per frame: observation.state, action, timestamp, frame_index,
                              episode_index, index, task_index (+ image columns: struct{bytes: PNG, path})
    videos/<key>/chunk-000/file-000.mp4
                              all episodes of one camera back to back; an episode is
                              [from_timestamp, to_timestamp) of the file

v2.1 (read only): meta/episodes.jsonl, meta/tasks.jsonl, meta/episodes_stats.jsonl,
``data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet`` and
``videos/chunk-{episode_chunk:03d}/<key>/episode_{episode_index:06d}.mp4`` (one file per episode). v2.0 is the
same with meta/stats.json instead of per-episode stats.
"""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


CODEBASE_VERSION = "v3.0"
IMAGE_PREFIX = "observation.images."
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DEFAULT_DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
DEFAULT_EPISODES_PATH = "meta/episodes/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_TASKS_PATH = "meta/tasks.parquet"
LEGACY_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
LEGACY_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_MB = 100
DEFAULT_VIDEO_FILE_SIZE_MB = 500
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def camera_key(camera: str) -> str:
    """Feature key of a camera: "cam_high" -> "observation.images.cam_high"."""
    return camera if camera.startswith("observation.") else IMAGE_PREFIX + camera


def camera_name(key: str) -> str:
    for prefix in (IMAGE_PREFIX, "observation."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def column_to_numpy(col: pa.ChunkedArray | pa.Array, key: str) -> np.ndarray:
    """A scalar or (fixed-size) list column as a numpy array: (N,) or (N, D)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_list(arr.type):
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(arr), arr.type.list_size)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if len(arr) and not np.all(lengths == lengths[0]):
            raise ValueError(f"column {key!r} has rows of different lengths {sorted(set(lengths.tolist()))[:5]}")
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(arr), int(lengths[0]) if len(arr) else 0)
    return arr.to_numpy(zero_copy_only=False)
