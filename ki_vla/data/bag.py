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

"""rosbag2 recordings (mcap or sqlite3) -> LeRobot v3.0 dataset, one bag per episode.

Read with `rosbags` (pure Python; no ROS install needed). Every stream is resampled onto one control-rate
clock by timestamp, taking the nearest *previous* sample (what a controller running at that rate would have
seen):

* ticks start when every required stream has produced a sample (for joint streams: every joint has been
  named at least once) and end at the earliest last sample of any of them;
* state = `/joint_states`, reordered by joint *name* into `JOINT_NAMES` order (messages may carry the joints in
  any order, or be split per arm);
* action = the arm controllers' `JointTrajectory` commands (first point's positions, assembled by joint name
  across the left and right topics: teleoperation setups publish leader positions there); where none of the
  command topics is recorded, the action at tick k is the joint state at tick k+1 (the last tick repeats);
* task = the first `std_msgs/String` on `/instruction` (or `task:` from the config);
* cameras = `sensor_msgs/Image` (rgb8, bgr8, mono8, ... via rosbags-image) or `<topic>/compressed`.

Timestamps are the bag's receive times by default (`use_header_stamps: true` switches to header stamps where a
message has one). Images are decoded only for the frames that are used and streamed into the video encoder.

A bad bag (cannot be opened or is truncated, a topic is missing or has the wrong type, unknown or missing
joint names, a message that does not deserialize, streams that never overlap) raises one
`BagConversionError` naming the bag and the problem; the output dataset is written to a temp folder and
only renamed into place when everything succeeded, so it never exists half-written.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ki_vla.configs import build, load_yaml
from ki_vla.data.images import RESIZE_MODES, resize_for_model
from ki_vla.data.lerobot import LeRobotDatasetWriter
from ki_vla.joints import CAMERA_NAMES, CONTROL_HZ, JOINT_NAMES, TRAJECTORY_TOPICS

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
STRING_TYPE = "std_msgs/msg/String"
TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"


class BagConversionError(ValueError):
    """A rosbag2 recording cannot be converted; the message names the bag and what is wrong with it."""


def default_cameras() -> dict[str, str]:
    """Camera name -> raw image topic, as the sim and the ALOHA recordings name them."""
    return {cam: f"/{cam}/image_raw" for cam in CAMERA_NAMES}


@dataclass
class BagConversionConfig:
    """What to read from the bags and how to write the dataset. Defaults follow ARCHITECTURE.md's topics.

    YAML: a mapping with these field names, at the top level or under a `convert_bag:` key, e.g.::

        fps: 50
        cameras: {cam_high: /cam_high/image_raw}
        image_size: [240, 320]        # H, W; omit to keep the recorded size
        joint_name_map: {waist_left: left_waist}
    """

    fps: int = int(CONTROL_HZ)
    cameras: dict[str, str] = field(default_factory=default_cameras)  # camera name -> topic
    state_topic: str = "/joint_states"
    action_topics: list[str] = field(
        default_factory=lambda: [f"/{t}" for t in TRAJECTORY_TOPICS]
    )
    instruction_topic: str | None = "/instruction"
    task: str | None = None  # used when set (instead of the instruction topic)
    joint_names: list[str] = field(default_factory=lambda: list(JOINT_NAMES))
    joint_name_map: dict[str, str] = field(default_factory=dict)  # recorded name -> our name
    ignore_extra_joints: bool = False  # drop joints outside joint_names instead of failing
    image_size: tuple[int, int] | None = None  # (H, W); None keeps the recorded size
    resize_mode: str = "stretch"  # how frames are fitted to image_size: stretch | pad | crop (ki_vla.data.images)
    use_header_stamps: bool = False
    use_videos: bool = True
    vcodec: str | None = None  # None: AV1 if available, else h264, else mpeg4
    robot_type: str = "aloha"

    def __post_init__(self) -> None:
        if float(self.fps) != int(self.fps) or int(self.fps) <= 0:
            raise ValueError(f"convert-bag config: fps must be a positive integer, got {self.fps!r}")
        self.fps = int(self.fps)
        if not isinstance(self.cameras, Mapping):
            raise ValueError("convert-bag config: cameras must map camera names to image topics")
        self.cameras = {str(k): str(v) for k, v in self.cameras.items()}
        self.action_topics = [str(t) for t in (self.action_topics or [])]
        self.joint_names = [str(j) for j in self.joint_names]
        if len(set(self.joint_names)) != len(self.joint_names) or not self.joint_names:
            raise ValueError(f"convert-bag config: joint_names must be unique and non-empty, got {self.joint_names}")
        if self.image_size is not None:
            size = tuple(int(v) for v in self.image_size)
            if len(size) != 2 or min(size) <= 0:
                raise ValueError(f"convert-bag config: image_size must be [height, width], got {self.image_size!r}")
            self.image_size = size  # type: ignore[assignment]
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"convert-bag config: resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.task is not None and not str(self.task).strip():
            raise ValueError("convert-bag config: task must be non-empty when given")
        if self.task is None and not self.instruction_topic:
            raise ValueError("convert-bag config: set instruction_topic or task (every episode needs an instruction)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BagConversionConfig:
        """Build from a mapping; unknown keys are an error (a typo should not silently use a default)."""
        if "convert_bag" in data and isinstance(data["convert_bag"], Mapping):
            data = data["convert_bag"]
        return build(cls, dict(data), "convert-bag config")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> BagConversionConfig:
        """Load from a YAML file (see the class docstring for the format)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"convert-bag config {path} does not exist")
        data = load_yaml(path) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"convert-bag config {path} must hold a mapping")
        return cls.from_dict(data)


@dataclass
class _CameraPlan:
    topic: str
    compressed: bool
    times: np.ndarray  # int64 ns of every message on the topic, in bag order
    frame_msg: np.ndarray  # (T,) index into the topic's messages for each tick


@dataclass
class BagEpisode:
    """Pass-1 result for one bag: resampled state/action, task, and which image message each tick uses."""

    path: Path
    task: str
    ticks_ns: np.ndarray
    state: np.ndarray
    action: np.ndarray
    action_source: str  # "command" or "next_state"
    cameras: dict[str, _CameraPlan]
    native_shape: tuple[int, int] | None = None  # (H, W) of the recorded images

    @property
    def length(self) -> int:
        return int(self.ticks_ns.shape[0])


class _NamedStream:
    """Samples of named scalar channels (joints) arriving in messages that may carry any subset of them."""

    def __init__(self, what: str, joint_names: Sequence[str]) -> None:
        self.what = what
        self.index = {n: i for i, n in enumerate(joint_names)}
        self.times: list[list[int]] = [[] for _ in joint_names]
        self.values: list[list[float]] = [[] for _ in joint_names]
        self.last_ns: int | None = None

    def add(self, t: int, positions: Sequence[int | str | float], idx: Sequence[int]) -> None:
        for i, p in zip(idx, positions):
            self.times[i].append(t)
            self.values[i].append(float(p))
        self.last_ns = t if self.last_ns is None else max(self.last_ns, t)

    def missing(self, joint_names: Sequence[str]) -> list[str]:
        return [joint_names[i] for i, t in enumerate(self.times) if not t]

    def first_complete_ns(self) -> int:
        return max(min(t) for t in self.times)

    def resample(self, ticks: np.ndarray) -> np.ndarray:
        """Value of every joint at every tick: the latest sample at or before the tick."""
        out = np.empty((ticks.shape[0], len(self.times)), dtype=np.float64)
        for j, (t, v) in enumerate(zip(self.times, self.values)):
            t_arr = np.asarray(t, dtype=np.int64)
            order = np.argsort(t_arr, kind="stable")
            t_arr, v_arr = t_arr[order], np.asarray(v, dtype=np.float64)[order]
            idx = np.searchsorted(t_arr, ticks, side="right") - 1
            out[:, j] = v_arr[np.clip(idx, 0, None)]
        return out


def _stamp_ns(msg: Any, fallback: int, use_header: bool) -> int:
    if use_header and hasattr(msg, "header"):
        s = msg.header.stamp
        ns = int(s.sec) * 1_000_000_000 + int(s.nanosec)
        if ns > 0:
            return ns
    return fallback


def _open_reader(path: Path) -> Any:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if not path.exists():
        raise BagConversionError(f"bag {path}: does not exist")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except BagConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags raises many types for unreadable / truncated bags
        raise BagConversionError(
            f"bag {path}: cannot be opened as a rosbag2 recording, truncated or corrupt? ({type(exc).__name__}: {exc})"
        ) from exc
    return reader


def _topic_types(reader: Any) -> dict[str, str]:
    return {c.topic: c.msgtype for c in reader.connections}


def _require(path: Path, types: Mapping[str, str], topic: str, msgtype: str, what: str) -> None:
    if topic not in types:
        raise BagConversionError(
            f"bag {path}: missing topic {topic} ({what}); recorded topics: {sorted(types)}"
        )
    if types[topic] != msgtype:
        raise BagConversionError(f"bag {path}: topic {topic} has type {types[topic]}, expected {msgtype} ({what})")


def _camera_topic(path: Path, types: Mapping[str, str], cam: str, topic: str) -> tuple[str, bool]:
    """The topic to read for a camera: the configured one, or its `/compressed` image_transport variant."""
    candidates = [topic] if topic.endswith("/compressed") else [topic, topic + "/compressed"]
    for cand in candidates:
        if cand in types:
            want = COMPRESSED_TYPE if cand.endswith("/compressed") else IMAGE_TYPE
            if types[cand] not in (IMAGE_TYPE, COMPRESSED_TYPE):
                raise BagConversionError(
                    f"bag {path}: camera {cam} topic {cand} has type {types[cand]}, expected {want}"
                )
            return cand, types[cand] == COMPRESSED_TYPE
    raise BagConversionError(
        f"bag {path}: missing topic {' or '.join(candidates)} (camera {cam}); recorded topics: {sorted(types)}"
    )


def _messages(reader: Any, path: Path, topics: Sequence[str]) -> Iterator[tuple[str, int, Any, Any]]:
    """(topic, bag time ns, rawdata, connection) in bag order; read errors become BagConversionError."""
    conns = [c for c in reader.connections if c.topic in set(topics)]
    try:
        for conn, t, raw in reader.messages(connections=conns):
            yield conn.topic, int(t), raw, conn
    except BagConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated chunks, malformed sqlite pages, ...
        raise BagConversionError(f"bag {path}: cannot read messages ({type(exc).__name__}: {exc}); truncated or "
                                 "corrupt?") from exc


def _deserialize(reader: Any, path: Path, raw: Any, conn: Any) -> Any:
    try:
        return reader.deserialize(raw, conn.msgtype)
    except Exception as exc:  # noqa: BLE001
        raise BagConversionError(
            f"bag {path}: a message on {conn.topic} does not deserialize as {conn.msgtype} "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _joint_indices(
    path: Path, topic: str, names: Sequence[str], config: BagConversionConfig, index: Mapping[str, int]
) -> tuple[list[int], list[int]]:
    """(our joint index, message position) pairs for a message's joint names; unknown names are an error."""
    ours, positions, unknown = [], [], []
    for pos, name in enumerate(names):
        mapped = config.joint_name_map.get(name, name)
        if mapped in index:
            ours.append(index[mapped])
            positions.append(pos)
        elif not config.ignore_extra_joints:
            unknown.append(name)
    if unknown:
        raise BagConversionError(
            f"bag {path}: unknown joint name(s) {unknown} on {topic}; expected names from {list(index)} "
            "(map them with joint_name_map, or set ignore_extra_joints)"
        )
    return ours, positions


def plan_bag(path: str | os.PathLike[str], config: BagConversionConfig) -> BagEpisode:
    """Pass 1 over one bag: validate topics and types, resample state/action, pick image messages per tick.

    Reads every message of the used topics but deserializes only the small ones (and one image for the
    recorded size); images are decoded later by `iter_camera_frames`.
    """
    path = Path(path)
    reader = _open_reader(path)
    try:
        types = _topic_types(reader)
        _require(path, types, config.state_topic, JOINT_STATE_TYPE, "joint state")
        cams = {cam: _camera_topic(path, types, cam, topic) for cam, topic in config.cameras.items()}
        recorded_cmd = [t for t in config.action_topics if t in types]
        if recorded_cmd:
            for t in config.action_topics:
                _require(path, types, t, TRAJECTORY_TYPE, "action command")
        use_instruction = config.task is None
        if use_instruction:
            _require(path, types, str(config.instruction_topic), STRING_TYPE, "task instruction")

        index = {n: i for i, n in enumerate(config.joint_names)}
        state = _NamedStream("joint state", config.joint_names)
        command = _NamedStream("action command", config.joint_names)
        image_times: dict[str, list[int]] = {cam: [] for cam in cams}
        topic_to_cam = {topic: cam for cam, (topic, _) in cams.items()}
        task: str | None = config.task.strip() if config.task else None
        first_image: dict[str, tuple[Any, Any]] = {}
        topics = [config.state_topic, *recorded_cmd, *topic_to_cam]
        if use_instruction:
            topics.append(str(config.instruction_topic))
        for topic, t, raw, conn in _messages(reader, path, topics):
            if topic in topic_to_cam:
                cam = topic_to_cam[topic]
                if cam not in first_image:
                    first_image[cam] = (raw, conn)
                if config.use_header_stamps:
                    t = _stamp_ns(_deserialize(reader, path, raw, conn), t, True)
                image_times[cam].append(t)
            elif topic == config.state_topic:
                msg = _deserialize(reader, path, raw, conn)
                names, pos = list(msg.name), np.asarray(msg.position, dtype=np.float64)
                if len(pos) != len(names):
                    raise BagConversionError(
                        f"bag {path}: a JointState on {topic} has {len(names)} names but {len(pos)} positions"
                    )
                ours, mpos = _joint_indices(path, topic, names, config, index)
                state.add(_stamp_ns(msg, t, config.use_header_stamps), pos[mpos], ours)
            elif topic in recorded_cmd:
                msg = _deserialize(reader, path, raw, conn)
                if not len(msg.points):
                    continue  # an empty trajectory carries no target
                names = list(msg.joint_names)
                pos = np.asarray(msg.points[0].positions, dtype=np.float64)
                if len(pos) != len(names):
                    raise BagConversionError(
                        f"bag {path}: a JointTrajectory on {topic} has {len(names)} joint names but its first "
                        f"point has {len(pos)} positions"
                    )
                ours, mpos = _joint_indices(path, topic, names, config, index)
                command.add(_stamp_ns(msg, t, config.use_header_stamps), pos[mpos], ours)
            elif task is None:
                msg = _deserialize(reader, path, raw, conn)
                if str(msg.data).strip():
                    task = str(msg.data).strip()

        if task is None:
            raise BagConversionError(f"bag {path}: no non-empty instruction on {config.instruction_topic}")
        missing = state.missing(config.joint_names)
        if missing:
            raise BagConversionError(f"bag {path}: joint(s) {missing} never published on {config.state_topic}")
        if recorded_cmd:
            missing = command.missing(config.joint_names)
            if missing:
                raise BagConversionError(
                    f"bag {path}: joint(s) {missing} never commanded on {', '.join(recorded_cmd)}"
                )
        for cam, times in image_times.items():
            if not times:
                raise BagConversionError(f"bag {path}: no images on {cams[cam][0]} (camera {cam})")

        starts = {config.state_topic: state.first_complete_ns(), **{cams[c][0]: min(t) for c, t in image_times.items()}}
        ends = {config.state_topic: state.last_ns, **{cams[c][0]: max(t) for c, t in image_times.items()}}
        if recorded_cmd:
            starts["action commands"] = command.first_complete_ns()
            ends["action commands"] = command.last_ns
        t0, t1 = max(starts.values()), min(ends.values())  # type: ignore[type-var]
        period_ns = 1e9 / config.fps
        if t1 < t0:
            raise BagConversionError(
                f"bag {path}: streams never overlap in time (latest start {max(starts, key=starts.get)} at "
                f"{(t0 - min(starts.values())) / 1e9:.3f}s is after the earliest end {min(ends, key=ends.get)})"
            )
        n = int(math.floor((t1 - t0) / period_ns + 1e-6)) + 1
        if n < 2:
            raise BagConversionError(f"bag {path}: fewer than 2 control ticks where all streams overlap")
        ticks = t0 + np.round(np.arange(n) * period_ns).astype(np.int64)
        state_arr = state.resample(ticks)
        if recorded_cmd:
            action_arr, source = command.resample(ticks), "command"
        else:
            action_arr = np.concatenate([state_arr[1:], state_arr[-1:]], axis=0)
            source = "next_state"

        cam_plans: dict[str, _CameraPlan] = {}
        for cam, times in image_times.items():
            t_arr = np.asarray(times, dtype=np.int64)
            order = np.argsort(t_arr, kind="stable")
            pos = np.searchsorted(t_arr[order], ticks, side="right") - 1
            cam_plans[cam] = _CameraPlan(cams[cam][0], cams[cam][1], t_arr, order[np.clip(pos, 0, None)])
        episode = BagEpisode(path, task, ticks, state_arr, action_arr, source, cam_plans)
        shapes = set()
        for cam, (raw, conn) in first_image.items():
            shapes.add(_decode_image(reader, path, raw, conn).shape[:2])
        if len(shapes) == 1:
            episode.native_shape = shapes.pop()
        return episode
    finally:
        reader.close()


def _decode_image(reader: Any, path: Path, raw: Any, conn: Any) -> np.ndarray:
    from rosbags.image import message_to_cvimage

    msg = _deserialize(reader, path, raw, conn)
    try:
        img = message_to_cvimage(msg, "rgb8")
    except Exception as exc:  # noqa: BLE001 - rosbags-image raises ImageError subclasses and cv2 errors
        enc = getattr(msg, "encoding", getattr(msg, "format", "?"))
        raise BagConversionError(f"bag {path}: image on {conn.topic} (encoding {enc!r}) cannot be decoded: "
                                 f"{exc}") from exc
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.dtype != np.uint8:
        raise BagConversionError(f"bag {path}: image on {conn.topic} decodes to {img.dtype}, expected 8-bit")
    return img


def iter_camera_frames(
    episode: BagEpisode, cam: str, shape: tuple[int, int], progress: tqdm | None = None, mode: str = "stretch"
) -> Iterator[np.ndarray]:
    """Pass 2: yield one (H, W, 3) uint8 RGB frame per tick for `cam`, decoding each used message once."""
    plan = episode.cameras[cam]
    needed = plan.frame_msg
    if np.any(np.diff(needed) < 0):
        # Header stamps out of bag order: decode the used messages first, then emit in tick order.
        yield from _iter_camera_frames_unordered(episode, cam, shape, progress, mode)
        return
    reader = _open_reader(episode.path)
    try:
        tick = 0
        for msg_i, (_, _, raw, conn) in enumerate(_messages(reader, episode.path, [plan.topic])):
            if tick >= needed.shape[0]:
                break
            if needed[tick] != msg_i:
                continue
            img = _decode_image(reader, episode.path, raw, conn)
            img = np.ascontiguousarray(resize_for_model(img, shape, mode))
            while tick < needed.shape[0] and needed[tick] == msg_i:
                yield img
                tick += 1
                if progress is not None:
                    progress.update(1)
        if tick < needed.shape[0]:
            raise BagConversionError(f"bag {episode.path}: {plan.topic} ended before all planned frames were read")
    finally:
        reader.close()


def _iter_camera_frames_unordered(
    episode: BagEpisode, cam: str, shape: tuple[int, int], progress: tqdm | None, mode: str
) -> Iterator[np.ndarray]:
    plan = episode.cameras[cam]
    wanted = set(plan.frame_msg.tolist())
    decoded: dict[int, np.ndarray] = {}
    reader = _open_reader(episode.path)
    try:
        for msg_i, (_, _, raw, conn) in enumerate(_messages(reader, episode.path, [plan.topic])):
            if msg_i in wanted:
                img = _decode_image(reader, episode.path, raw, conn)
                decoded[msg_i] = np.ascontiguousarray(resize_for_model(img, shape, mode))
    finally:
        reader.close()
    for msg_i in plan.frame_msg.tolist():
        if msg_i not in decoded:
            raise BagConversionError(f"bag {episode.path}: {plan.topic} ended before all planned frames were read")
        yield decoded[msg_i]
        if progress is not None:
            progress.update(1)


def _native_shape_checked(episodes: Sequence[BagEpisode]) -> tuple[int, int]:
    shapes = {e.native_shape for e in episodes}
    for e in episodes:
        if e.native_shape is None:
            raise BagConversionError(
                f"bag {e.path}: cameras have different image sizes; set image_size in the convert-bag config"
            )
    if len(shapes) != 1:
        raise BagConversionError(
            f"bags have different image sizes {sorted(shapes)}; set image_size in the convert-bag config"
        )
    return shapes.pop()  # type: ignore[return-value]


def convert_bags(
    bags: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    config: BagConversionConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert rosbag2 recordings (one per episode) into a LeRobot v3.0 dataset at `out`; returns `out`.

    All bags are validated (pass 1) before anything is encoded, so a bad bag fails fast; any error later
    discards the partial output. Raises BagConversionError (a ValueError) for a bad bag.
    """
    config = config or BagConversionConfig()
    if not bags:
        raise ValueError("convert-bag: no bags given")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"output dataset {out} already exists (use --overwrite to replace it)")
    episodes = [plan_bag(b, config) for b in tqdm(bags, desc="check bags", unit="bag", disable=not progress)]
    if config.image_size is not None:
        shape = tuple(config.image_size)
    elif config.cameras:
        shape = _native_shape_checked(episodes)
    else:
        shape = (2, 2)
    writer = LeRobotDatasetWriter.create(
        out,
        fps=config.fps,
        camera_names=list(config.cameras),
        image_shape=(shape[0], shape[1], 3),
        state_names=config.joint_names,
        action_names=config.joint_names,
        robot_type=config.robot_type,
        use_videos=config.use_videos,
        vcodec=config.vcodec,
        overwrite=overwrite,
    )
    total = sum(e.length for e in episodes) * max(1, len(config.cameras))
    try:
        with tqdm(total=total, desc="convert", unit="frame", disable=not progress) as bar:
            for ep in episodes:
                images = {cam: iter_camera_frames(ep, cam, (shape[0], shape[1]), bar, config.resize_mode)
                          for cam in config.cameras}
                writer.add_episode(images, ep.state, ep.action, ep.task)
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return out


__all__ = [
    "BagConversionConfig",
    "BagConversionError",
    "BagEpisode",
    "convert_bags",
    "iter_camera_frames",
    "plan_bag",
]
