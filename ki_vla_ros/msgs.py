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

"""ROS message <-> numpy conversions (thin: the math lives in ki_vla.data.images and ki_vla.infer).

Why cv_bridge is optional: on a system ROS 2 install cv_bridge is the reference converter and is used for
raw frames; on pip-only machines it does not exist and ki_vla.data.images does the same job (the tests
compare the two where both exist).
"""
from __future__ import annotations

import array
from typing import Callable

import numpy as np
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ki_vla.data.images import ImageDecodeError, compressed_to_rgb, raw_to_rgb, rgb_to_raw
from ki_vla.joints import StateSource
from ki_vla_ros.ros_util import duration_to_sec, to_duration_msg, to_time_msg

try:  # system ROS 2 only
    from cv_bridge import CvBridge, CvBridgeError  # type: ignore[import-not-found]

    _BRIDGE: CvBridge | None = CvBridge()
except ImportError:  # pip-only install: our own conversion
    CvBridgeError = Exception  # type: ignore[misc,assignment]
    _BRIDGE = None


def cv_bridge_available() -> bool:
    return _BRIDGE is not None


def image_msg_to_rgb(msg: Image, use_cv_bridge: bool = True) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 (H, W, 3); raises ImageDecodeError with the reason."""
    if use_cv_bridge and _BRIDGE is not None:
        try:
            out = _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except (CvBridgeError, TypeError, ValueError) as exc:
            raise ImageDecodeError(f"cv_bridge: {exc}") from exc
        return np.ascontiguousarray(out)
    return raw_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    return compressed_to_rgb(msg.format, msg.data)


def rgb_to_image_msg(rgb: np.ndarray, header: Header, encoding: str = "rgb8") -> Image:
    """RGB uint8 -> sensor_msgs/Image in `encoding` (array.array assignment avoids rosidl's per-byte check)."""
    data, step = rgb_to_raw(rgb, encoding)
    msg = Image(header=header, height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
                is_bigendian=0, step=step)
    msg.data = array.array("B", data)
    return msg


def joint_state_positions(msg: JointState, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Positions of `names` (in that order) from a JointState that may list joints in any order or carry
    extra joints; raises ValueError when one is missing, lengths disagree, or a value is not finite."""
    if len(msg.position) != len(msg.name):
        raise ValueError(f"JointState has {len(msg.name)} names but {len(msg.position)} positions")
    index = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"JointState lacks joint(s) {missing}")
    q = np.array([msg.position[index[n]] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise ValueError("JointState contains NaN or inf")
    return q


class JointStateJoiner:
    """One policy-order joint vector from the joint_states of several sources (ki_vla.joints.state_sources: one per
    namespace of a per-arm ros2_control stack). Only a complete and fresh vector is returned: one arm's silent
    driver must read as missing state, not as that arm standing still."""

    def __init__(self, sources: tuple[StateSource, ...], timeout: float) -> None:
        self.sources = sources
        self.timeout = float(timeout)
        self._q = np.full(sum(len(idx) for _, _, idx in sources), np.nan)
        self._seen = [-np.inf] * len(sources)     # receive time of each source's last message
        self._stamps = [0.0] * len(sources)

    def update(self, source: int, msg: JointState, now: float) -> tuple[np.ndarray, float] | None:
        """(positions, the oldest source's stamp) once every source is fresher than `timeout` s, else None.
        Raises ValueError for a message that lacks a joint or carries NaN (joint_state_positions)."""
        _, names, indices = self.sources[source]
        self._q[list(indices)] = joint_state_positions(msg, names)
        self._seen[source] = now
        self._stamps[source] = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if any(now - t > self.timeout for t in self._seen):
            return None
        return self._q.copy(), min(self._stamps)

    def offer(self, source: int, msg: JointState, now: float,
              reject: Callable[[int, ValueError], None]) -> tuple[np.ndarray, float] | None:
        """`update` for a subscription callback: an invalid message goes to `reject(source, error)` (the node
        counts and logs it and keeps running) and reads as no vector."""
        try:
            return self.update(source, msg, now)
        except ValueError as exc:
            reject(source, exc)
            return None


def make_joint_state(names: tuple[str, ...] | list[str], q: np.ndarray, stamp: float) -> JointState:
    msg = JointState(name=list(names), position=[float(x) for x in q])
    msg.header.stamp = to_time_msg(stamp)
    return msg


def chunk_to_trajectory(actions: np.ndarray, names: tuple[str, ...] | list[str], stamp: float, dt: float,
                        frame_id: str = "") -> JointTrajectory:
    """An action chunk as JointTrajectory: header.stamp = observation time, point i at i * dt."""
    msg = JointTrajectory(joint_names=list(names))
    msg.header.stamp = to_time_msg(stamp)
    msg.header.frame_id = frame_id
    for i, row in enumerate(np.asarray(actions, dtype=np.float64)):
        msg.points.append(JointTrajectoryPoint(positions=row.tolist(), time_from_start=to_duration_msg(i * dt)))
    return msg


def trajectory_to_arrays(msg: JointTrajectory) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(joint_names, times (H,), positions (H, J)); raises ValueError for ragged points (a point whose
    positions length differs from joint_names), so malformed messages are rejected, not reshaped."""
    names = list(msg.joint_names)
    times = np.array([duration_to_sec(p.time_from_start) for p in msg.points], dtype=np.float64)
    for k, p in enumerate(msg.points):
        if len(p.positions) != len(names):
            raise ValueError(f"point {k} has {len(p.positions)} positions for {len(names)} joint names")
    positions = np.array([list(p.positions) for p in msg.points], dtype=np.float64).reshape(len(msg.points), len(names))
    return names, times, positions


def command_trajectory(names: tuple[str, ...] | list[str], positions: np.ndarray, dt: float,
                       velocities: bool = False) -> JointTrajectory:
    """A ros2_control JointTrajectoryController command: stamp 0 (start now), point k at (k + 1) * dt,
    strictly increasing; positions (K, J).

    `velocities` (K >= 2): each point also carries the path's velocity (central differences), so JTC interpolates
    with cubic splines instead of straight segments whose velocity jumps at every point; the last point's velocity is
    0, which JTC's default `allow_nonzero_velocity_at_trajectory_end: false` requires and which makes a stream that
    stops end at rest on its last point."""
    pos = np.atleast_2d(positions)
    vel = None
    if velocities and len(pos) >= 2:
        vel = np.gradient(pos, dt, axis=0)
        vel[-1] = 0.0
    msg = JointTrajectory(joint_names=list(names))
    for k, row in enumerate(pos):
        point = JointTrajectoryPoint(positions=[float(x) for x in row], time_from_start=to_duration_msg((k + 1) * dt))
        if vel is not None:
            point.velocities = [float(x) for x in vel[k]]
        msg.points.append(point)
    return msg
