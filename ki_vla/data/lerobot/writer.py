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

"""Writing LeRobot v3.0 datasets (ki_vla.data.lerobot.format).

The writer buildseverything in a hidden temp folder beside the target and renames it into place in
`finalize()`, so an exception or a killed process never leaves a half-written dataset at `root`.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ki_vla.atomic import publish_dir
from ki_vla.data import normalize
from ki_vla.data.normalize import ACTION_KEY, STATE_KEY
from ki_vla.data.video import VideoEncoder, available_encoder
from ki_vla.data.lerobot.format import (
    CODEBASE_VERSION, DEFAULT_CHUNKS_SIZE, DEFAULT_DATA_FILE_SIZE_MB, DEFAULT_DATA_PATH, DEFAULT_EPISODES_PATH,
    DEFAULT_TASKS_PATH, DEFAULT_VIDEO_FILE_SIZE_MB, DEFAULT_VIDEO_PATH, INDEX_FEATURES, camera_key, camera_name,
    column_to_numpy)


# Frames per episode sampled for image stats (LeRobot samples ~100 too); stats see images at <= this size.
_IMAGE_STATS_FRAMES = 100
_IMAGE_STATS_MAX_SIDE = 150


def _next_chunk_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def _encode_png(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


class LeRobotDatasetWriter:
    """Writes a LeRobot v3.0 dataset episode by episode, published atomically by `finalize()`.

    Use as a context manager to have the dataset finalized on success and discarded on an exception.
    Data parquet files and videos roll over to the next chunk/file when they exceed the size limits,
    as LeRobot's own writer does.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fps: int,
        camera_names: Sequence[str],
        image_shape: tuple[int, int, int],
        state_names: Sequence[str],
        action_names: Sequence[str],
        robot_type: str | None = "aloha",
        use_videos: bool = True,
        vcodec: str | None = None,
        overwrite: bool = False,
        data_file_size_mb: float = DEFAULT_DATA_FILE_SIZE_MB,
        video_file_size_mb: float = DEFAULT_VIDEO_FILE_SIZE_MB,
        chunks_size: int = DEFAULT_CHUNKS_SIZE,
    ) -> None:
        """Start a dataset at `root` (which must not exist unless `overwrite`). `vcodec` None = AV1 when this
        PyAV can encode it, else H.264, else MPEG-4; "h264", "av1", "mpeg4" or an encoder name force one."""
        self.root = Path(root)
        if float(fps) != int(fps) or int(fps) <= 0:
            raise ValueError(f"fps must be a positive integer (LeRobot stores it as one), got {fps!r}")
        if len(image_shape) != 3 or image_shape[2] != 3 or min(image_shape) <= 0:
            raise ValueError(f"image_shape must be (H, W, 3), got {tuple(image_shape)}")
        if len(set(camera_names)) != len(camera_names):
            raise ValueError(f"camera names must be unique, got {list(camera_names)}")
        if not state_names or not action_names:
            raise ValueError("state_names and action_names must be non-empty")
        if self.root.exists() and not overwrite:
            raise ValueError(f"output dataset {self.root} already exists (pass overwrite=True to replace it)")
        self.fps = int(fps)
        self.camera_names = [camera_name(c) for c in camera_names]
        self.image_shape = (int(image_shape[0]), int(image_shape[1]), 3)
        self.state_names = list(state_names)
        self.action_names = list(action_names)
        self.robot_type = robot_type
        self.use_videos = bool(use_videos)
        self.vcodec = vcodec
        self.codec: str | None = None
        self.overwrite = overwrite
        self.data_file_size_mb = float(data_file_size_mb)
        self.video_file_size_mb = float(video_file_size_mb)
        self.chunks_size = int(chunks_size)
        if self.use_videos and (self.image_shape[0] % 2 or self.image_shape[1] % 2):
            raise ValueError(f"videos need even image height and width, got {self.image_shape}; use use_videos=False")
        if self.use_videos and self.camera_names:
            self.codec = available_encoder(vcodec)[1]  # an unusable codec fails now, not after an episode
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.root.parent / f".{self.root.name}.partial-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self._closed = False
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []
        self._num_frames = 0
        self._states: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._image_stats: dict[str, list[dict[str, np.ndarray]]] = {c: [] for c in self.camera_names}
        self._data_pos = (0, 0)
        self._data_writer: pq.ParquetWriter | None = None
        self._data_bytes = 0
        self._video_pos = {c: (0, 0) for c in self.camera_names}
        self._video: dict[str, VideoEncoder] = {}
        self._schema = self._build_schema()

    @classmethod
    def create(cls, root: str | os.PathLike[str], **options: Any) -> LeRobotDatasetWriter:
        """The LeRobot spelling (`LeRobotDataset.create`) of the constructor."""
        return cls(root, **options)

    # ------------------------------------------------------------------ schema
    def _features(self) -> dict[str, dict[str, Any]]:
        h, w, c = self.image_shape
        feats: dict[str, dict[str, Any]] = {}
        for cam in self.camera_names:
            feat: dict[str, Any] = {
                "dtype": "video" if self.use_videos else "image",
                "shape": [h, w, c],
                "names": ["height", "width", "channels"],
            }
            if self.use_videos:
                feat["info"] = {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": self.codec,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": c,
                    "has_audio": False,
                }
            feats[camera_key(cam)] = feat
        feats[STATE_KEY] = {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names}
        feats[ACTION_KEY] = {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names}
        feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in ("frame_index", "episode_index", "index", "task_index"):
            feats[name] = {"dtype": "int64", "shape": [1], "names": None}
        for f in feats.values():
            if f["dtype"] != "video":
                f["fps"] = self.fps
        return feats

    def _build_schema(self) -> pa.Schema:
        fields = [
            pa.field(STATE_KEY, pa.list_(pa.float32(), len(self.state_names))),
            pa.field(ACTION_KEY, pa.list_(pa.float32(), len(self.action_names))),
            pa.field("timestamp", pa.float32()),
            pa.field("frame_index", pa.int64()),
            pa.field("episode_index", pa.int64()),
            pa.field("index", pa.int64()),
            pa.field("task_index", pa.int64()),
        ]
        hf: dict[str, Any] = {
            STATE_KEY: {"feature": {"dtype": "float32", "_type": "Value"}, "length": len(self.state_names),
                        "_type": "Sequence"},
            ACTION_KEY: {"feature": {"dtype": "float32", "_type": "Value"}, "length": len(self.action_names),
                         "_type": "Sequence"},
            "timestamp": {"dtype": "float32", "_type": "Value"},
            **{k: {"dtype": "int64", "_type": "Value"}
               for k in ("frame_index", "episode_index", "index", "task_index")},
        }
        if not self.use_videos:
            for cam in self.camera_names:
                fields.insert(0, pa.field(camera_key(cam), pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
                hf[camera_key(cam)] = {"_type": "Image"}
        # datasets' schema metadata lets `datasets.Dataset.from_parquet` type image columns as Image.
        return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": hf}})})

    # ------------------------------------------------------------------ writing
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"dataset writer for {self.root} is already finalized or aborted")

    def add_episode(
        self,
        images: Mapping[str, np.ndarray | Iterable[np.ndarray]],
        state: np.ndarray,
        action: np.ndarray,
        task: str,
    ) -> int:
        """Append one episode; returns its episode_index.

        `images[cam]` is a (T, H, W, 3) uint8 array, or an iterable yielding T (H, W, 3) uint8 frames (streamed
        into the encoder, so long episodes never sit in memory). Array inputs are validated before anything
        is written; an error after writing started (e.g. a streamed frame of the wrong shape) aborts the whole
        dataset, since its video files would no longer line up with the data.
        """
        self._check_open()
        state = np.asarray(state, dtype=np.float32)
        action = np.asarray(action, dtype=np.float32)
        if state.ndim != 2 or state.shape[1] != len(self.state_names):
            raise ValueError(f"state must be (T, {len(self.state_names)}), got {state.shape}")
        if action.ndim != 2 or action.shape[1] != len(self.action_names):
            raise ValueError(f"action must be (T, {len(self.action_names)}), got {action.shape}")
        length = state.shape[0]
        if length == 0:
            raise ValueError("an episode needs at least one frame")
        if action.shape[0] != length:
            raise ValueError(f"state has {length} frames but action has {action.shape[0]}")
        if not (np.all(np.isfinite(state)) and np.all(np.isfinite(action))):
            raise ValueError("state/action contain NaN or inf")
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task must be a non-empty string, got {task!r}")
        if set(images) != set(self.camera_names):
            raise ValueError(f"images must have exactly the cameras {self.camera_names}, got {sorted(images)}")
        for cam, frames in images.items():
            if isinstance(frames, np.ndarray):
                want = (length, *self.image_shape)
                if frames.shape != want or frames.dtype != np.uint8:
                    raise ValueError(f"images[{cam!r}] must be uint8 {want}, got {frames.dtype} {frames.shape}")
        try:
            return self._write_episode(images, state, action, task.strip(), length)
        except BaseException:
            self.abort()
            raise

    def _frames(self, cam: str, frames: np.ndarray | Iterable[np.ndarray], length: int) -> Iterator[np.ndarray]:
        n = 0
        for frame in frames:
            if n >= length:
                raise ValueError(f"images[{cam!r}] yields more than the {length} frames of state/action")
            if frame.shape != self.image_shape or frame.dtype != np.uint8:
                raise ValueError(f"images[{cam!r}] frame {n} must be uint8 {self.image_shape}, got {frame.dtype} "
                                 f"{frame.shape}")
            yield frame
            n += 1
        if n != length:
            raise ValueError(f"images[{cam!r}] yields {n} frames but state/action have {length}")

    def _write_episode(
        self,
        images: Mapping[str, np.ndarray | Iterable[np.ndarray]],
        state: np.ndarray,
        action: np.ndarray,
        task: str,
        length: int,
    ) -> int:
        ep_index = len(self._episodes)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        from_index = self._num_frames
        row: dict[str, Any] = {"episode_index": ep_index, "tasks": [task], "length": length}
        stride = max(1, length // _IMAGE_STATS_FRAMES)
        png_columns: dict[str, list[dict[str, Any]]] = {}
        ep_image_stats: dict[str, dict[str, np.ndarray]] = {}
        for cam in self.camera_names:
            key = camera_key(cam)
            sampled: list[np.ndarray] = []
            if self.use_videos:
                enc = self._video_encoder(cam)
                row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"] = self._video_pos[cam]
                row[f"videos/{key}/from_timestamp"] = enc.duration_s
                for n, frame in enumerate(self._frames(cam, images[cam], length)):
                    enc.add(frame)
                    if n % stride == 0:
                        sampled.append(_downsample(frame))
                row[f"videos/{key}/to_timestamp"] = enc.duration_s
            else:
                cells = []
                for n, frame in enumerate(self._frames(cam, images[cam], length)):
                    cells.append({"bytes": _encode_png(frame), "path": None})
                    if n % stride == 0:
                        sampled.append(_downsample(frame))
                png_columns[key] = cells
            ep_image_stats[key] = normalize.compute_image_stats(np.stack(sampled))
            self._image_stats[cam].append(ep_image_stats[key])

        frame_index = np.arange(length, dtype=np.int64)
        columns: dict[str, pa.Array] = {
            **{k: pa.array(v, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
               for k, v in png_columns.items()},
            STATE_KEY: pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), len(self.state_names)),
            ACTION_KEY: pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), len(self.action_names)),
            "timestamp": pa.array((frame_index / self.fps).astype(np.float32)),
            "frame_index": pa.array(frame_index),
            "episode_index": pa.array(np.full(length, ep_index, dtype=np.int64)),
            "index": pa.array(np.arange(from_index, from_index + length, dtype=np.int64)),
            "task_index": pa.array(np.full(length, task_index, dtype=np.int64)),
        }
        table = pa.Table.from_arrays([columns[f.name] for f in self._schema], schema=self._schema)
        row["data/chunk_index"], row["data/file_index"] = self._data_file_for(table.nbytes)
        self._data_writer.write_table(table)
        self._data_bytes += table.nbytes
        row["dataset_from_index"] = from_index
        row["dataset_to_index"] = from_index + length
        ep_stats: dict[str, dict[str, np.ndarray]] = dict(ep_image_stats)
        ep_stats[STATE_KEY] = normalize.compute_stats(state)
        ep_stats[ACTION_KEY] = normalize.compute_stats(action)
        for name in INDEX_FEATURES:
            ep_stats[name] = normalize.compute_stats(column_to_numpy(columns[name], name).astype(np.float64))
        for fname, fstats in ep_stats.items():
            for sname, value in fstats.items():
                row[f"stats/{fname}/{sname}"] = np.asarray(value).tolist()
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self._episodes.append(row)
        self._states.append(state)
        self._actions.append(action)
        self._num_frames += length
        return ep_index

    def _video_encoder(self, cam: str) -> VideoEncoder:
        """The open encoder of `cam`, rolled over to the next file once the current one exceeds the limit."""
        enc = self._video.get(cam)
        if enc is not None and enc.bytes_written >= self.video_file_size_mb * 1024 * 1024:
            enc.close()
            self._video_pos[cam] = _next_chunk_file(*self._video_pos[cam], self.chunks_size)
            enc = None
        if enc is None:
            chunk, file = self._video_pos[cam]
            path = self.tmp / DEFAULT_VIDEO_PATH.format(video_key=camera_key(cam), chunk_index=chunk, file_index=file)
            enc = VideoEncoder(path, self.fps, self.image_shape[1], self.image_shape[0], codec=self.vcodec)
            self.codec = enc.codec
            self._video[cam] = enc
        return enc

    def _data_file_for(self, nbytes: int) -> tuple[int, int]:
        if (self._data_writer is not None and self._data_bytes
                and self._data_bytes + nbytes > self.data_file_size_mb * 1024 * 1024):
            self._data_writer.close()
            self._data_writer = None
            self._data_pos = _next_chunk_file(*self._data_pos, self.chunks_size)
        if self._data_writer is None:
            chunk, file = self._data_pos
            path = self.tmp / DEFAULT_DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self._schema)
            self._data_bytes = 0
        return self._data_pos

    # ------------------------------------------------------------------ finishing
    def _close_files(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for enc in self._video.values():
            enc.close()
        self._video.clear()

    def _compute_stats(self) -> normalize.Stats:
        stats: normalize.Stats = {
            STATE_KEY: normalize.compute_stats(np.concatenate(self._states)),
            ACTION_KEY: normalize.compute_stats(np.concatenate(self._actions)),
        }
        for cam, per_ep in self._image_stats.items():
            stats[camera_key(cam)] = normalize.aggregate_stats(per_ep)
        for name in INDEX_FEATURES:
            stats[name] = normalize.aggregate_stats([_unflatten_ep_stats(r, name) for r in self._episodes])
        return stats

    def _write_meta(self) -> None:
        meta = self.tmp / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        normalize.write_json_atomic(normalize.stats_to_json(self._compute_stats()), meta / "stats.json")
        tasks = sorted(self._tasks, key=self._tasks.__getitem__)
        pd.DataFrame({"task_index": [self._tasks[t] for t in tasks]}, index=pd.Index(tasks, name="task")).to_parquet(
            self.tmp / DEFAULT_TASKS_PATH
        )
        ep_path = self.tmp / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), ep_path)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._num_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": _int_if_whole(self.data_file_size_mb),
            "video_files_size_in_mb": _int_if_whole(self.video_file_size_mb),
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DEFAULT_DATA_PATH,
            "video_path": DEFAULT_VIDEO_PATH if self.use_videos and self.camera_names else None,
            "features": self._features(),
        }
        normalize.write_json_atomic(info, meta / "info.json")

    def _publish(self) -> None:
        """Swap the finished temp folder in as `root` (replacing an old dataset only when `overwrite`)."""
        try:
            publish_dir(self.tmp, self.root, replace=self.overwrite)
        except FileExistsError as e:
            raise ValueError(f"output dataset {self.root} appeared while writing; not replacing it") from e

    def finalize(self) -> Path:
        """Close files, compute stats, write meta/ and atomically publish the dataset; returns its path."""
        self._check_open()
        try:
            if not self._episodes:
                raise ValueError(f"no episodes were added to {self.root}; nothing to write")
            self._close_files()
            self._write_meta()
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.root

    def abort(self) -> None:
        """Discard everything written so far (idempotent); `root` is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            self._close_files()
        except Exception:  # noqa: BLE001 - the files are being deleted anyway
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _downsample(frame: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(frame.shape[:2]) / _IMAGE_STATS_MAX_SIDE)))
    return frame[::step, ::step]


def _unflatten_ep_stats(row: Mapping[str, Any], feature: str) -> dict[str, np.ndarray]:
    prefix = f"stats/{feature}/"
    return {k[len(prefix):]: np.asarray(v) for k, v in row.items() if k.startswith(prefix)}
