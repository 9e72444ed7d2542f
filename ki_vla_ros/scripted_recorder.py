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

"""scripted_recorder: plays planned scripted episodes through the ROS graph and records them as rosbag2.

`ki-vla collect --bag` plans successful scripted episodes without ROS (ki_vla.sim), then starts sim_node in
lockstep mode and this node. For each episode it resets the sim to the episode's seed, publishes the
episode's joint commands on the two arm controller topics (the sim ticks once per left/right pair, as it
does when the executor drives it), and records what a robot's recorder would see: every message arriving
over DDS on the camera topics, /joint_states, /instruction and the two command topics (its own commands
come back through its subscriptions like anyone's), one bag per episode. Subscriptions are raw, as
`ros2 bag record`'s are: the serialized CDR bytes that came off the wire are written unchanged, through
`rosbags` (rosbag2_py is not on PyPI).

Log times are sim time, and in lockstep "when it arrived" has no meaning of its own: the sim waits for us, and
the /clock message races the data topics, so stamping with the node clock at arrival put some frames one tick
late (a flaky off-by-one in the converted episode). Instead: observations (images, joint states) are logged
at their header stamp, the sim time they were produced at, which is what a robot's receive time approximates;
our commands at the sim time of the status they answer; anything else (the latched instruction) at the latest
sim time known. Before the first episode every subscription must be matched, so no first frame is lost to
discovery.
"""
from __future__ import annotations

import json
import shutil
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Int64, String
from trajectory_msgs.msg import JointTrajectory

from ki_vla.joints import CAMERA_NAMES, CONTROL_HZ, LEFT_JOINTS, RIGHT_JOINTS, TRAJECTORY_TOPICS
from ki_vla_ros.msgs import command_trajectory
from ki_vla_ros.ros_util import (CAMERA_IN_QOS, JOINT_STATE_IN_QOS, LATCHED_INSTRUCTION_QOS, RELIABLE_QOS,
                                 declare_config, now_sec, run_node)

STORAGES = ("mcap", "sqlite3")
HEADER_STAMPED = ("sensor_msgs/msg/Image", "sensor_msgs/msg/JointState")


def header_stamp_ns(cdr: bytes) -> int:
    """The header stamp of a serialized message that starts with std_msgs/Header (Image, JointState).

    Read straight from the CDR bytes (4-byte encapsulation, then int32 sec and uint32 nanosec) rather than
    deserializing a whole image to read 8 bytes; the encapsulation says the byte order."""
    if len(cdr) < 12 or cdr[0] != 0:
        raise ValueError("not a CDR-encapsulated message")
    order = "<" if cdr[1] & 1 else ">"
    sec, nanosec = struct.unpack_from(order + "iI", cdr, 4)
    return sec * 1_000_000_000 + nanosec


@dataclass
class ScriptedRecorderConfig:
    episodes_file: str = ""                 # npz from ki-vla collect: seeds (N,), actions (N, T, 14)
    output: str = ""                        # folder: one bag per episode (episode_000000, ...)
    storage: str = "mcap"
    camera_names: list[str] = field(default_factory=lambda: list(CAMERA_NAMES))
    camera_topic: str = "/{name}/image_raw"
    joint_states_topic: str = "/joint_states"
    instruction_topic: str = "/instruction"
    left_command_topic: str = f"/{TRAJECTORY_TOPICS[0]}"
    right_command_topic: str = f"/{TRAJECTORY_TOPICS[1]}"
    status_topic: str = "/sim/status"
    reset_topic: str = "/sim/reset"
    control_hz: float = CONTROL_HZ
    startup_timeout: float = 120.0          # wall seconds for sim_node to come up (imports, scene, GL context)
    tick_timeout: float = 10.0              # wall seconds for the sim to answer one command pair
    settle_seconds: float = 0.3             # wall seconds to let in-flight messages land before a bag closes
    reset_attempts: int = 3                 # resets per episode until its first observation is seen whole

    def validate(self) -> None:
        if not self.episodes_file or not Path(self.episodes_file).is_file():
            raise FileNotFoundError(f"episodes_file {self.episodes_file!r} does not exist")
        if not self.output:
            raise ValueError("output folder is required")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if self.reset_attempts < 1:
            raise ValueError(f"reset_attempts must be >= 1, got {self.reset_attempts}")


class ScriptedRecorder(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("scripted_recorder", **kwargs)
        self.cfg = declare_config(self, ScriptedRecorderConfig)
        self.cfg.validate()
        data = np.load(self.cfg.episodes_file)
        self.seeds, self.actions = data["seeds"].astype(int), data["actions"].astype(float)
        self.error = ""
        self._lock = threading.Lock()
        self._status_cv = threading.Condition(self._lock)
        self._status: dict[str, Any] = {}
        self._writer: Any = None
        self._conns: dict[str, Any] = {}
        self._latest_ns = 0                                  # latest sim time known (status clocks, stamps)
        self._received: dict[str, int] = {}                  # topic -> messages written to the open bag
        # command topic -> sim times of our commands in flight
        self._issued: dict[str, deque[int]] = {self.cfg.left_command_topic: deque(),
                                               self.cfg.right_command_topic: deque()}
        self.left_pub = self.create_publisher(JointTrajectory, self.cfg.left_command_topic, RELIABLE_QOS)
        self.right_pub = self.create_publisher(JointTrajectory, self.cfg.right_command_topic, RELIABLE_QOS)
        self.reset_pub = self.create_publisher(Int64, self.cfg.reset_topic, RELIABLE_QOS)
        self.topics: dict[str, tuple[str, type]] = {
            self.cfg.joint_states_topic: ("sensor_msgs/msg/JointState", JointState),
            self.cfg.instruction_topic: ("std_msgs/msg/String", String),
            self.cfg.left_command_topic: ("trajectory_msgs/msg/JointTrajectory", JointTrajectory),
            self.cfg.right_command_topic: ("trajectory_msgs/msg/JointTrajectory", JointTrajectory),
        }
        for cam in self.cfg.camera_names:
            self.topics[self.cfg.camera_topic.format(name=cam)] = ("sensor_msgs/msg/Image", Image)
        qos = {self.cfg.joint_states_topic: JOINT_STATE_IN_QOS, self.cfg.instruction_topic: LATCHED_INSTRUCTION_QOS,
               self.cfg.left_command_topic: RELIABLE_QOS, self.cfg.right_command_topic: RELIABLE_QOS}
        self._subs = {topic: self.create_subscription(msg_type, topic, lambda data, t=topic: self._record(t, data),
                                                      qos.get(topic, CAMERA_IN_QOS), raw=True)
                      for topic, (_, msg_type) in self.topics.items()}
        self._stamped = {t for t, (name, _) in self.topics.items() if name in HEADER_STAMPED}
        self._status_sub = self.create_subscription(String, self.cfg.status_topic, self._on_status, RELIABLE_QOS)
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()

    # ---- recording ---------------------------------------------------------------------------------------
    def _record(self, topic: str, data: bytes) -> None:
        with self._lock:
            if topic in self._issued:  # reliable and in order: the oldest command in flight is this one
                t_ns = self._issued[topic].popleft() if self._issued[topic] else self._latest_ns
            elif topic in self._stamped:
                t_ns = header_stamp_ns(data)
            else:
                t_ns = max(self._latest_ns, int(now_sec(self) * 1e9))
            self._latest_ns = max(self._latest_ns, t_ns)
            if self._writer is not None:
                self._writer.write(self._conns[topic], t_ns, data)
                self._received[topic] = self._received.get(topic, 0) + 1
                self._status_cv.notify_all()

    def _open(self, path: Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        ts = get_typestore(Stores.ROS2_KILTED)
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[self.cfg.storage]
        writer = Writer(path, version=9, storage_plugin=plugin)
        writer.open()
        conns = {topic: writer.add_connection(topic, msgtype, typestore=ts)
                 for topic, (msgtype, _) in self.topics.items()}
        with self._lock:
            self._writer, self._conns, self._received = writer, conns, {}

    def _close(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    # ---- episodes ------------------------------------------------------------------------------------------
    def _on_status(self, msg: String) -> None:
        try:
            status = json.loads(msg.data)
        except json.JSONDecodeError:
            return
        with self._status_cv:
            self._status = status
            if isinstance(status.get("clock"), (int, float)):
                self._latest_ns = max(self._latest_ns, int(round(status["clock"] * 1e9)))
            self._status_cv.notify_all()

    def _wait_status(self, pred, what: str) -> dict[str, Any]:
        with self._status_cv:
            if not self._status_cv.wait_for(lambda: pred(self._status), timeout=self.cfg.tick_timeout):
                raise TimeoutError(f"sim did not report {what} within {self.cfg.tick_timeout} s (last: {self._status})")
            return dict(self._status)

    def _command(self, q: np.ndarray, issued_ns: int) -> None:
        dt = 1.0 / self.cfg.control_hz
        for pub, topic, names, part in ((self.left_pub, self.cfg.left_command_topic, LEFT_JOINTS, q[:7]),
                                        (self.right_pub, self.cfg.right_command_topic, RIGHT_JOINTS, q[7:])):
            with self._lock:
                self._issued[topic].append(issued_ns)
            pub.publish(command_trajectory(names, part[None, :], dt))

    def _start_episode(self, path: Path, seed: int) -> dict[str, Any]:
        """Open the episode's bag and reset the sim into it; returns the step-0 status.

        Recording starts before the reset: the reset's observation and the latched instruction belong to the
        episode. Discovery can match our reader before the sim's writer has matched it back, and a volatile
        message sent in between is lost, so the reset's status and the step-0 observation must be seen on every
        camera and the joint states; if not, the bag is discarded and the (deterministic) reset repeated."""
        observed = [self.cfg.joint_states_topic] + [self.cfg.camera_topic.format(name=c) for c in self.cfg.camera_names]
        for attempt in range(1, self.cfg.reset_attempts + 1):
            self._open(path)
            with self._lock:
                self._status = {}  # a late status from an earlier attempt must not pass for this reset's
            self.reset_pub.publish(Int64(data=seed))
            with self._status_cv:
                reset = self._status_cv.wait_for(lambda: self._status.get("seed") == seed
                                                 and self._status.get("step") == 0, self.cfg.tick_timeout)
                status = dict(self._status)
                if reset and self._status_cv.wait_for(lambda: all(self._received.get(t) for t in observed),
                                                      self.cfg.tick_timeout):
                    return status
                missing = [t for t in observed if not self._received.get(t)] if reset else [self.cfg.status_topic]
            self._close()
            shutil.rmtree(path, ignore_errors=True)
            self.get_logger().warning(f"seed {seed}: step-0 observation missing on {missing} (attempt {attempt}); "
                                      "resetting again")
        raise TimeoutError(f"seed {seed}: no complete step-0 observation after {self.cfg.reset_attempts} resets")

    def _wait_matched(self) -> None:
        """Every recorded topic and the status have their publisher and the sim hears our resets.

        This, not a first status, is how we know the sim is up: in lockstep the sim publishes its start-up
        status once, possibly before our subscription matched (volatile: lost), and then waits for us. The
        first episode's reset brings a status we are sure to hear."""
        deadline = time.monotonic() + self.cfg.startup_timeout
        while True:
            subs = {**self._subs, self.cfg.status_topic: self._status_sub}
            missing = [t for t, sub in subs.items() if sub.get_publisher_count() < 1]
            if self.reset_pub.get_subscription_count() < 1:
                missing.append(self.cfg.reset_topic)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no peer matched on {missing} within {self.cfg.startup_timeout} s "
                                   "(is sim_node up in lockstep mode?)")
            time.sleep(0.05)

    def _run(self) -> None:
        out = Path(self.cfg.output)
        try:
            self._wait_matched()
            for k, (seed, actions) in enumerate(zip(self.seeds, self.actions, strict=True)):
                status = self._start_episode(out / f"episode_{k:06d}", int(seed))
                for t, q in enumerate(actions):
                    self._command(q, int(round(status["clock"] * 1e9)))
                    status = self._wait_status(lambda s, t=t: s.get("seed") == seed and s.get("step") == t + 1,
                                               f"tick {t + 1}")
                threading.Event().wait(self.cfg.settle_seconds)
                self._close()
                final = dict(self._status)
                if not final.get("success"):
                    raise RuntimeError(f"seed {seed}: the episode replayed through ROS did not succeed ({final})")
                self.get_logger().info(f"recorded episode {k + 1}/{len(self.seeds)} (seed {seed}, "
                                       f"{len(actions)} ticks)")
        except Exception as exc:  # noqa: BLE001 - reported through the exit code and the log
            self.error = str(exc)
            self.get_logger().error(f"recording failed: {exc}")
        finally:
            self._close()
            self.context.try_shutdown()


def main(args: list[str] | None = None) -> int:
    """Console entry: exits 0 when every episode was recorded and succeeded, 1 otherwise."""
    return run_node(ScriptedRecorder, "scripted_recorder", args, exit_code=lambda node: 1 if node.error else 0)


if __name__ == "__main__":
    import sys

    sys.exit(main())
