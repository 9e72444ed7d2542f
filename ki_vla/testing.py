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

"""Synthetic inputs for tests and benchmarks: a small, fully predictable rosbag2 recording with the stack's topics.

Kept out of `ki_vla.data.bag` (the converter's public API): nothing a user converts is made here. The values are
functions of (joint, time) and (camera, frame) so a test can check every converted number exactly.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ki_vla.data.bag import (COMPRESSED_TYPE, IMAGE_TYPE, JOINT_STATE_TYPE, STRING_TYPE, TRAJECTORY_TYPE,
                             default_cameras)
from ki_vla.joints import JOINT_NAMES, TRAJECTORY_TOPICS


def synthetic_joint_value(joint: int, t_s: float, command: bool = False) -> float:
    """The value `write_synthetic_bag` records for joint `joint` (our order) at `t_s` seconds after start."""
    return 0.1 * joint + t_s + (0.5 if command else 0.0)


def synthetic_image_value(camera: int, k: int) -> tuple[int, int, int]:
    """RGB colour of the k-th image of camera number `camera` in `write_synthetic_bag` (uniform frames)."""
    return ((k * 8) % 256, (40 * camera + 20) % 256, 128)


def write_synthetic_bag(
    path: str | os.PathLike[str],
    *,
    storage: str = "mcap",
    duration_s: float = 1.0,
    joint_hz: float = 100.0,
    camera_hz: float = 25.0,
    command_hz: float | None = 50.0,
    cameras: Mapping[str, str] | None = None,
    image_size: tuple[int, int] = (32, 32),
    encoding: str = "rgb8",
    compressed: bool = False,
    instruction: str | None = "transfer the red cube",
    joint_names: Sequence[str] = JOINT_NAMES,
    joint_order: Sequence[int] | None = None,
    start_ns: int = 1_700_000_000_000_000_000,
    camera_start_s: float = 0.0,
    extra: Sequence[tuple[str, str, int, Any]] = (),
) -> Path:
    """Record a small, fully predictable rosbag2 (mcap or sqlite3) with the stack's topics.

    For tests, demos and benchmarks of the conversion path without a robot: joint `j` reads
    `synthetic_joint_value(j, t)` on /joint_states (published in `joint_order`, names included, so readers must
    reorder by name), the arm controllers carry `synthetic_joint_value(j, t, command=True)` split per arm,
    and camera image k is uniformly `synthetic_image_value(cam, k)` (rgb8, bgr8 or mono8; or PNG on
    `<topic>/compressed`), starting `camera_start_s` late. `extra` adds (topic, msgtype, time_ns, message) entries
    verbatim.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    cameras = dict(default_cameras() if cameras is None else cameras)
    order = list(joint_order) if joint_order is not None else list(range(len(joint_names)))
    h, w = image_size

    def header(t_ns: int, frame: str = "") -> Any:
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000),
            frame_id=frame,
        )

    entries: list[tuple[int, str, str, Any]] = []
    empty = np.array([], dtype=np.float64)
    for k in range(int(math.floor(duration_s * joint_hz + 1e-9)) + 1):
        t_s = k / joint_hz
        t_ns = start_ns + int(round(t_s * 1e9))
        msg = T[JOINT_STATE_TYPE](
            header=header(t_ns),
            name=[joint_names[j] for j in order],
            position=np.array([synthetic_joint_value(j, t_s) for j in order], dtype=np.float64),
            velocity=empty,
            effort=empty,
        )
        entries.append((t_ns, "/joint_states", JOINT_STATE_TYPE, msg))
    if command_hz:
        half = len(joint_names) // 2
        arms = {f"/{TRAJECTORY_TOPICS[0]}": range(half), f"/{TRAJECTORY_TOPICS[1]}": range(half, len(joint_names))}
        for k in range(int(math.floor(duration_s * command_hz + 1e-9)) + 1):
            t_s = k / command_hz
            t_ns = start_ns + int(round(t_s * 1e9)) + 1_000_000  # 1 ms after the joint states
            for topic, joints in arms.items():
                point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=np.array([synthetic_joint_value(j, t_s, command=True) for j in joints], dtype=np.float64),
                    velocities=empty,
                    accelerations=empty,
                    effort=empty,
                    time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=20_000_000),
                )
                msg = T[TRAJECTORY_TYPE](header=header(0), joint_names=[joint_names[j] for j in joints], points=[point])
                entries.append((t_ns, topic, TRAJECTORY_TYPE, msg))
    for c, (cam, topic) in enumerate(cameras.items()):
        for k in range(int(math.floor(duration_s * camera_hz + 1e-9)) + 1):
            t_ns = start_ns + int(round((camera_start_s + k / camera_hz) * 1e9)) + 2_000_000
            rgb = np.empty((h, w, 3), dtype=np.uint8)
            rgb[:] = synthetic_image_value(c, k)
            if compressed:
                ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                assert ok
                msg = T[COMPRESSED_TYPE](header=header(t_ns, cam), format="rgb8; png compressed bgr8",
                                         data=buf.reshape(-1))
                entries.append((t_ns, topic + "/compressed", COMPRESSED_TYPE, msg))
                continue
            if encoding == "rgb8":
                data, step = rgb, w * 3
            elif encoding == "bgr8":
                data, step = rgb[:, :, ::-1], w * 3
            elif encoding == "mono8":
                data, step = rgb[:, :, 0], w
            else:
                raise ValueError(f"write_synthetic_bag: unsupported encoding {encoding!r}")
            msg = T[IMAGE_TYPE](
                header=header(t_ns, cam), height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
                data=np.ascontiguousarray(data).reshape(-1),
            )
            entries.append((t_ns, topic, IMAGE_TYPE, msg))
    if instruction is not None:
        entries.append((start_ns, "/instruction", STRING_TYPE, T[STRING_TYPE](data=instruction)))
    entries.extend((t, topic, msgtype, msg) for topic, msgtype, t, msg in extra)
    entries.sort(key=lambda e: e[0])

    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    path = Path(path)
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns: dict[str, Any] = {}
        for t_ns, topic, msgtype, msg in entries:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], t_ns, ts.serialize_cdr(msg, msgtype))
    return path
