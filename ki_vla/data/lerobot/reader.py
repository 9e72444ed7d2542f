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

"""Reading LeRobot datasets: v3.0 and v2.x (v2.0/v2.1) layouts (ki_vla.data.lerobot.format), frames and
videos decoded per episode."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ki_vla.data import normalize
from ki_vla.data.normalize import ACTION_KEY, STATE_KEY
from ki_vla.data.video import decode_frames
from ki_vla.data.lerobot.format import (
    DEFAULT_CHUNKS_SIZE, DEFAULT_DATA_PATH, DEFAULT_TASKS_PATH, DEFAULT_VIDEO_PATH, INDEX_FEATURES,
    LEGACY_DATA_PATH, LEGACY_VIDEO_PATH, camera_name, column_to_numpy)


def _feature_names(feature: Mapping[str, Any], key: str) -> list[str]:
    """Names of a vector feature: a list, LeRobot v2's {"motors": [...]} form, or generated."""
    dim = int(np.prod(feature.get("shape", [0])))
    names = feature.get("names")
    if isinstance(names, Mapping):
        flat = [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
        names = flat
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{key}_{i}" for i in range(dim)]


def _decode_png_cell(cell: Any, root: Path, key: str) -> np.ndarray:
    """An image cell of a LeRobot image column: {"bytes": PNG/JPEG, "path": ...} or raw bytes, to RGB."""
    data: bytes | None
    path = None
    if isinstance(cell, Mapping):
        data, path = cell.get("bytes"), cell.get("path")
    else:
        data = cell
    if data is None and path:
        p = Path(path) if Path(path).is_absolute() else root / path
        if not p.is_file():
            raise ValueError(f"image column {key!r} refers to missing file {p}")
        data = p.read_bytes()
    if data is None:
        raise ValueError(f"image column {key!r} has an empty cell")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"image column {key!r} holds bytes that are not a decodable image")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise ValueError(f"LeRobot dataset file {path} is missing") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ValueError(f"LeRobot dataset file {path} is missing")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n} is not valid JSON: {exc}") from exc
    return rows


@dataclass
class _EpisodeMeta:
    """Where one episode lives: rows of the numeric table, task, data file and per-camera video span."""

    episode_index: int
    length: int
    tasks: list[str]
    data_path: Path | None = None
    videos: dict[str, tuple[Path, float, float]] = field(default_factory=dict)  # key -> (path, from_s, to_s)
    row_start: int = 0


class LeRobotDataset:
    """Read-only view of a local LeRobot dataset folder (v3.0, v2.1 or v2.0).

    Numeric columns of all frames are loaded into memory at construction (small: ~120 bytes a frame);
    images are decoded per episode on demand by `episode(i)`.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"LeRobot dataset folder {self.root} does not exist")
        self.info: dict[str, Any] = _read_json(self.root / "meta" / "info.json")
        self.version = str(self.info.get("codebase_version", ""))
        if not (self.version.startswith("v3.") or self.version.startswith("v2.")):
            raise ValueError(
                f"{self.root}: unsupported LeRobot codebase_version {self.version!r} (supported: v2.0, v2.1, v3.0)"
            )
        self.fps = float(self.info.get("fps", 0))
        if self.fps <= 0:
            raise ValueError(f"{self.root}/meta/info.json: fps must be positive, got {self.info.get('fps')!r}")
        self.features: dict[str, dict[str, Any]] = self.info.get("features") or {}
        for key in (STATE_KEY, ACTION_KEY):
            if key not in self.features:
                raise ValueError(f"{self.root}: feature {key!r} missing from meta/info.json "
                                 f"(have {sorted(self.features)})")
        self.robot_type = self.info.get("robot_type")
        self.state_names = _feature_names(self.features[STATE_KEY], STATE_KEY)
        self.action_names = _feature_names(self.features[ACTION_KEY], ACTION_KEY)
        self.camera_keys: dict[str, str] = {
            camera_name(k): k for k, f in self.features.items() if f.get("dtype") in ("video", "image")
        }
        self.camera_names = list(self.camera_keys)
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.chunks_size = int(self.info.get("chunks_size", DEFAULT_CHUNKS_SIZE))
        self._task_by_index = self._load_tasks()
        self.tasks = [self._task_by_index[i] for i in sorted(self._task_by_index)]
        self._episodes = self._load_episodes()
        self._load_frames()
        self.stats: normalize.Stats = self._load_stats()

    # ------------------------------------------------------------------ metadata
    @property
    def is_v3(self) -> bool:
        return self.version.startswith("v3.")

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return int(self._columns[ACTION_KEY].shape[0])

    @property
    def episode_lengths(self) -> list[int]:
        return [e.length for e in self._episodes]

    @property
    def episode_indices(self) -> list[int]:
        """The `episode_index` values in episode order (position i of `episode(i)`)."""
        return [e.episode_index for e in self._episodes]

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """(H, W, C) of the first camera as declared in info.json."""
        if not self.camera_keys:
            return None
        feat = self.features[next(iter(self.camera_keys.values()))]
        shape = [int(v) for v in feat.get("shape") or []]
        names = feat.get("names") or []
        if len(shape) == 3 and isinstance(names, list) and names and str(names[0]).startswith("channel"):
            shape = [shape[1], shape[2], shape[0]]  # some datasets declare (C, H, W); frames decode as (H, W, C)
        return tuple(shape) if len(shape) == 3 else None

    def _load_tasks(self) -> dict[int, str]:
        if self.is_v3:
            path = self.root / DEFAULT_TASKS_PATH
            if not path.is_file():
                raise ValueError(f"LeRobot dataset file {path} is missing")
            df = pd.read_parquet(path)
            if "task_index" not in df.columns:
                raise ValueError(f"{path} has no task_index column")
            texts = df["task"].tolist() if "task" in df.columns else df.index.tolist()
            return {int(i): str(t) for i, t in zip(df["task_index"].tolist(), texts)}
        rows = _read_jsonl(self.root / "meta" / "tasks.jsonl")
        return {int(r["task_index"]): str(r["task"]) for r in rows}

    def _load_episodes(self) -> list[_EpisodeMeta]:
        episodes: list[_EpisodeMeta] = []
        if self.is_v3:
            files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
            if not files:
                raise ValueError(f"{self.root}/meta/episodes holds no parquet files")
            table = pa.concat_tables(
                [pq.read_table(f, columns=[c for c in pq.read_schema(f).names if not c.startswith("stats/")])
                 for f in files],
                promote_options="default",
            )
            rows = table.to_pylist()
            data_tpl = self.info.get("data_path", DEFAULT_DATA_PATH)
            video_tpl = self.info.get("video_path") or DEFAULT_VIDEO_PATH
            for r in sorted(rows, key=lambda r: r["episode_index"]):
                ep = _EpisodeMeta(int(r["episode_index"]), int(r["length"]), list(r.get("tasks") or []))
                if r.get("data/chunk_index") is not None:
                    ep.data_path = self.root / data_tpl.format(
                        chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"])
                    )
                for key in self.video_keys:
                    col = f"videos/{key}/"
                    if r.get(col + "chunk_index") is None:
                        raise ValueError(f"{self.root}: meta/episodes lacks {col}chunk_index for episode "
                                         f"{ep.episode_index}")
                    path = self.root / video_tpl.format(
                        video_key=key, chunk_index=int(r[col + "chunk_index"]), file_index=int(r[col + "file_index"])
                    )
                    ep.videos[key] = (path, float(r[col + "from_timestamp"]), float(r[col + "to_timestamp"]))
                episodes.append(ep)
        else:
            data_tpl = self.info.get("data_path", LEGACY_DATA_PATH)
            video_tpl = self.info.get("video_path") or LEGACY_VIDEO_PATH
            for r in sorted(_read_jsonl(self.root / "meta" / "episodes.jsonl"), key=lambda r: r["episode_index"]):
                idx = int(r["episode_index"])
                chunk = idx // self.chunks_size
                ep = _EpisodeMeta(idx, int(r["length"]), [str(t) for t in r.get("tasks") or []])
                ep.data_path = self.root / data_tpl.format(episode_chunk=chunk, episode_index=idx)
                for key in self.video_keys:
                    path = self.root / video_tpl.format(episode_chunk=chunk, video_key=key, episode_index=idx)
                    ep.videos[key] = (path, 0.0, float("nan"))
                episodes.append(ep)
        if not episodes:
            raise ValueError(f"{self.root}: dataset has no episodes")
        return episodes

    def _data_files(self) -> list[Path]:
        if self.is_v3:
            files = sorted({e.data_path for e in self._episodes if e.data_path is not None})
            return files or sorted((self.root / "data").glob("*/*.parquet"))
        return [e.data_path for e in self._episodes if e.data_path is not None]

    def _load_frames(self) -> None:
        """Numeric columns of every frame, sorted by (episode_index, frame_index)."""
        files = self._data_files()
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{self.root}: data files missing: {missing[:3]}")
        numeric = [STATE_KEY, ACTION_KEY, *INDEX_FEATURES]
        tables = []
        # v2.x keeps one parquet per episode: thousands of small reads on big datasets deserve a progress bar.
        for f in tqdm(files, desc=f"read {self.root.name}", unit="file", disable=len(files) < 200, leave=False):
            names = pq.read_schema(f).names
            for need in (STATE_KEY, ACTION_KEY, "episode_index", "frame_index"):
                if need not in names:
                    raise ValueError(f"{f} lacks column {need!r}")
            tables.append(pq.read_table(f, columns=[c for c in numeric if c in names]))
        table = pa.concat_tables(tables, promote_options="default").sort_by(
            [("episode_index", "ascending"), ("frame_index", "ascending")]
        )
        self._columns: dict[str, np.ndarray] = {}
        for name in table.column_names:
            arr = column_to_numpy(table[name], name)
            if name in (STATE_KEY, ACTION_KEY):
                arr = arr.astype(np.float32, copy=False)
                if arr.ndim == 1:
                    arr = arr[:, None]
            elif arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            self._columns[name] = arr
        n = table.num_rows
        if "timestamp" not in self._columns:
            self._columns["timestamp"] = self._columns["frame_index"].astype(np.float64) / self.fps
        if "task_index" not in self._columns:
            self._columns["task_index"] = np.zeros(n, dtype=np.int64)
        ep_col = self._columns["episode_index"].astype(np.int64)
        for ep in self._episodes:
            start = int(np.searchsorted(ep_col, ep.episode_index, side="left"))
            stop = int(np.searchsorted(ep_col, ep.episode_index, side="right"))
            if stop - start != ep.length:
                raise ValueError(
                    f"{self.root}: episode {ep.episode_index} has {stop - start} frames in data/ but length "
                    f"{ep.length} in meta/episodes"
                )
            ep.row_start = start
        if self._columns[STATE_KEY].shape[1] != len(self.state_names):
            self.state_names = [f"{STATE_KEY}_{i}" for i in range(self._columns[STATE_KEY].shape[1])]
        if self._columns[ACTION_KEY].shape[1] != len(self.action_names):
            self.action_names = [f"{ACTION_KEY}_{i}" for i in range(self._columns[ACTION_KEY].shape[1])]

    def _load_stats(self) -> normalize.Stats:
        path = self.root / "meta" / "stats.json"
        if path.is_file():
            return normalize.stats_from_json(_read_json(path))
        legacy = self.root / "meta" / "episodes_stats.jsonl"
        if legacy.is_file():
            per_feature: dict[str, list[dict[str, np.ndarray]]] = {}
            for row in _read_jsonl(legacy):
                for key, fstats in normalize.stats_from_json(row["stats"]).items():
                    per_feature.setdefault(key, []).append(fstats)
            return {k: normalize.aggregate_stats(v) for k, v in per_feature.items()}
        return {}

    # ------------------------------------------------------------------ access
    def column(self, key: str) -> np.ndarray:
        """A numeric column over all frames in episode order (e.g. "action": (N, D))."""
        if key not in self._columns:
            raise ValueError(f"no numeric column {key!r} in {self.root} (have {sorted(self._columns)})")
        return self._columns[key]

    def episode_rows(self, i: int) -> tuple[int, int]:
        """[start, stop) of episode position i in `column()` arrays."""
        ep = self._episode_meta(i)
        return ep.row_start, ep.row_start + ep.length

    def _episode_meta(self, i: int) -> _EpisodeMeta:
        if not 0 <= i < len(self._episodes):
            raise IndexError(f"episode {i} out of range: dataset has {len(self._episodes)} episodes")
        return self._episodes[i]

    def episode_task(self, i: int) -> str:
        """The instruction of episode position i (its first frame's task)."""
        start, _ = self.episode_rows(i)
        ti = int(self._columns["task_index"][start])
        if ti in self._task_by_index:
            return self._task_by_index[ti]
        tasks = self._episode_meta(i).tasks
        if tasks:
            return tasks[0]
        raise ValueError(f"{self.root}: task_index {ti} of episode {self._episode_meta(i).episode_index} is not in "
                         "meta/tasks")

    def episode(self, i: int, cameras: Sequence[str] | None = None, decode_images: bool = True) -> dict[str, Any]:
        """Episode at position i: images {cam: (T, H, W, 3) uint8}, state (T, Ds), action (T, Da), task,
        timestamps (T,), frame_index (T,), episode_index. `cameras` limits which cameras are decoded."""
        ep = self._episode_meta(i)
        start, stop = ep.row_start, ep.row_start + ep.length
        cams = list(self.camera_names if cameras is None else cameras)
        unknown = [c for c in cams if c not in self.camera_keys]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; dataset {self.root} has {self.camera_names}")
        timestamps = self._columns["timestamp"][start:stop].astype(np.float64)
        images: dict[str, np.ndarray] = {}
        if decode_images:
            image_cols = [self.camera_keys[c] for c in cams if self.features[self.camera_keys[c]]["dtype"] == "image"]
            if image_cols:
                images.update(self._read_image_columns(ep, image_cols))
            for cam in cams:
                key = self.camera_keys[cam]
                if self.features[key]["dtype"] == "video":
                    path, from_s, _ = ep.videos[key]
                    images[cam] = decode_frames(path, from_s + timestamps, tolerance_s=1.0 / self.fps - 1e-4)
        return {
            "images": images,
            "state": self._columns[STATE_KEY][start:stop],
            "action": self._columns[ACTION_KEY][start:stop],
            "task": self.episode_task(i),
            "timestamps": timestamps,
            "frame_index": self._columns["frame_index"][start:stop],
            "episode_index": ep.episode_index,
        }

    def _read_image_columns(self, ep: _EpisodeMeta, keys: list[str]) -> dict[str, np.ndarray]:
        path = ep.data_path
        if path is None:
            raise ValueError(f"{self.root}: episode {ep.episode_index} has no data file recorded for its images")
        table = pq.read_table(
            path, columns=[*keys, "frame_index"], filters=[("episode_index", "=", ep.episode_index)]
        ).sort_by("frame_index")
        if table.num_rows != ep.length:
            raise ValueError(f"{path}: episode {ep.episode_index} has {table.num_rows} image rows, expected "
                             f"{ep.length}")
        out = {}
        for key in keys:
            frames = [_decode_png_cell(c, self.root, key) for c in table[key].to_pylist()]
            out[camera_name(key)] = np.stack(frames)
        return out

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, version={self.version}, fps={self.fps:g}, "
            f"episodes={self.num_episodes}, frames={self.num_frames}, cameras={self.camera_names})"
        )
