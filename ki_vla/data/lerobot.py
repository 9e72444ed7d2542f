"""LeRobot datasets on local disk: read v3.0 and v2.x (v2.0/v2.1) layouts, write v3.0.

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

The writer builds everything in a hidden temp folder beside the target and renames it into place in
`finalize()`, so an exception or a killed process never leaves a half-written dataset at `root`.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from ki_vla.atomic import publish_dir
from ki_vla.data import normalize
from ki_vla.data.normalize import ACTION_KEY, STATE_KEY
from ki_vla.data.video import VideoEncoder, available_encoder, decode_frames

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
_INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
# Frames per episode sampled for image stats (LeRobot samples ~100 too); stats see images at <= this size.
_IMAGE_STATS_FRAMES = 100
_IMAGE_STATS_MAX_SIDE = 150


def camera_key(camera: str) -> str:
    """Feature key of a camera: "cam_high" -> "observation.images.cam_high"."""
    return camera if camera.startswith("observation.") else IMAGE_PREFIX + camera


def _camera_name(key: str) -> str:
    for prefix in (IMAGE_PREFIX, "observation."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _next_chunk_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


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


def _column_to_numpy(col: pa.ChunkedArray | pa.Array, key: str) -> np.ndarray:
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


def _encode_png(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


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
                raise ValueError(f"{self.root}: feature {key!r} missing from meta/info.json (have {sorted(self.features)})")
        self.robot_type = self.info.get("robot_type")
        self.state_names = _feature_names(self.features[STATE_KEY], STATE_KEY)
        self.action_names = _feature_names(self.features[ACTION_KEY], ACTION_KEY)
        self.camera_keys: dict[str, str] = {
            _camera_name(k): k for k, f in self.features.items() if f.get("dtype") in ("video", "image")
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
                [pq.read_table(f, columns=[c for c in pq.read_schema(f).names if not c.startswith("stats/")]) for f in files],
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
                        raise ValueError(f"{self.root}: meta/episodes lacks {col}chunk_index for episode {ep.episode_index}")
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
        numeric = [STATE_KEY, ACTION_KEY, *_INDEX_FEATURES]
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
            arr = _column_to_numpy(table[name], name)
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
        raise ValueError(f"{self.root}: task_index {ti} of episode {self._episode_meta(i).episode_index} is not in meta/tasks")

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
            raise ValueError(f"{path}: episode {ep.episode_index} has {table.num_rows} image rows, expected {ep.length}")
        out = {}
        for key in keys:
            frames = [_decode_png_cell(c, self.root, key) for c in table[key].to_pylist()]
            out[_camera_name(key)] = np.stack(frames)
        return out

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, version={self.version}, fps={self.fps:g}, "
            f"episodes={self.num_episodes}, frames={self.num_frames}, cameras={self.camera_names})"
        )


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
        self.camera_names = [_camera_name(c) for c in camera_names]
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
        """LeRobot's spelling (`LeRobotDataset.create`) of the constructor."""
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
            STATE_KEY: {"feature": {"dtype": "float32", "_type": "Value"}, "length": len(self.state_names), "_type": "Sequence"},
            ACTION_KEY: {"feature": {"dtype": "float32", "_type": "Value"}, "length": len(self.action_names), "_type": "Sequence"},
            "timestamp": {"dtype": "float32", "_type": "Value"},
            **{k: {"dtype": "int64", "_type": "Value"} for k in ("frame_index", "episode_index", "index", "task_index")},
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
                raise ValueError(f"images[{cam!r}] frame {n} must be uint8 {self.image_shape}, got {frame.dtype} {frame.shape}")
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
            **{k: pa.array(v, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])) for k, v in png_columns.items()},
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
        for name in _INDEX_FEATURES:
            ep_stats[name] = normalize.compute_stats(_column_to_numpy(columns[name], name).astype(np.float64))
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
        if self._data_writer is not None and self._data_bytes and self._data_bytes + nbytes > self.data_file_size_mb * 1024 * 1024:
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
        for name in _INDEX_FEATURES:
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
