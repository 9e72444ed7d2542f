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

"""sim_node: the MuJoCo bimanual sim behind the interface a ros2_control robot offers.

Publishes `/<cam>/image_raw` (sensor_msgs/Image rgb8), `/joint_states` (the 14 joints of
ki_vla.joints), `/clock` (sim time, for nodes run with use_sim_time), the episode's instruction
(latched) and a JSON status per tick (reward, success: what evaluators need). Subscribes to the two
arm controller topics as the controllers `command_interface` names would: JointTrajectoryController
(ki_vla.sim.trajectory) or a streaming position controller (Float64MultiArray, held until the next), plus
`/sim/step` (std_msgs/UInt32: advance N ticks) and `/sim/reset` (std_msgs/Int64: new episode with
that seed, negative = next seed).

Modes:
* realtime: ticks at control_hz against the wall clock (demos, like a real robot).
* lockstep: the sim only advances when asked: N ticks per /sim/step message, and, when
  lockstep_on_command is true, one tick each time both arms have received a command since the last
  tick (an executor publishing both arms once per control period then drives the sim at its own pace).
  Results depend only on the messages, not on the machine's speed: deterministic tests.

All simulation (physics, rendering, publishing) runs in one worker thread: a MuJoCo GL context must
stay on the thread that made it, and ROS callbacks only queue requests. The physics, controllers and
clock are ki_vla.sim.robot.SimRobot; this file is wiring.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, Header, Int64, String, UInt32
from trajectory_msgs.msg import JointTrajectory

from ki_vla.control.safety import JointMapping
from ki_vla.joints import NUM_JOINTS, state_topic
from ki_vla.sim.robot import SimRobot, TickResult
from ki_vla.sim.scenes import BimanualSim
from ki_vla_ros.config import SimNodeConfig
from ki_vla_ros.msgs import rgb_to_image_msg, trajectory_to_arrays
from ki_vla_ros.ros_util import RELIABLE_QOS, Diagnostics, ThrottledLog, declare_config, run_node, to_sec, to_time_msg

# Images in lockstep: reliable keep-last-1 (each frame is one tick's observation and the stepper waits for it);
# it matches reliable and best-effort subscribers and never queues stale frames. In realtime, what a camera driver
# uses: best effort. Measured (bench/reliability.py, process faults): with the reliable writer, SIGKILLing
# camera_node after policy_node had once been SIGKILLed and restarted stopped image delivery to every subscriber
# for good (the sim kept ticking and publishing joint states); best effort resumes ~2 s after the kill.
# Latched topics (instruction) use transient local so late joiners get the current one.
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)
REALTIME_IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                                durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
CLOCK_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)


class SimNode(Node):
    """Wiring around SimRobot; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim_node", **kwargs)
        self.cfg = declare_config(self, SimNodeConfig)
        self.cfg.validate()
        self.layout = self.cfg.layout()
        self.mapping = JointMapping.from_lists(self.cfg.joint_scale, self.cfg.joint_offset, NUM_JOINTS)
        cams = tuple(self.cfg.camera_names) if self.cfg.camera_hz > 0 else ()
        self.env = BimanualSim(self.cfg.task, seed=self.cfg.seed, cameras=cams,
                               image_size=(self.cfg.image_height, self.cfg.image_width), control_hz=self.cfg.control_hz)
        clock_start = 0.0 if self.cfg.publish_clock else self.get_clock().now().nanoseconds * 1e-9
        self.robot = SimRobot(self.env, camera_every=self.cfg.camera_every or 1, clock_start=clock_start,
                              reset_settle=self.cfg.reset_settle,
                              groups={g.topic: (g.joint_names, g.indices) for g in self.layout.groups},
                              jtc_origin=self.cfg.jtc_origin)
        self.log = ThrottledLog(self)

        image_qos = REALTIME_IMAGE_QOS if self.cfg.mode == "realtime" else IMAGE_QOS
        self.frames_published = 0
        self.image_pubs = {c: self.create_publisher(Image, self.cfg.camera_topic.format(name=c), image_qos)
                           for c in cams}
        # One joint_states per namespace of the layout, with the names the robot's broadcaster would use.
        self.joint_pubs = [(self.create_publisher(JointState, state_topic(ns, self.cfg.joint_states_topic),
                                                  RELIABLE_QOS), names, list(idx))
                           for ns, names, idx in self.layout.state_sources]
        self.status_pub = self.create_publisher(String, self.cfg.status_topic, RELIABLE_QOS)
        self.instruction_pub = (self.create_publisher(String, self.cfg.instruction_topic, LATCHED_QOS)
                                if self.cfg.instruction_topic else None)
        self.clock_pub = (self.create_publisher(Clock, self.cfg.clock_topic, CLOCK_QOS)
                          if self.cfg.publish_clock else None)
        command_type = JointTrajectory if self.cfg.command_interface == "trajectory" else Float64MultiArray
        for g in self.layout.groups:
            self.create_subscription(command_type, g.topic, lambda m, t=g.topic: self._on_command(t, m), RELIABLE_QOS)
        self.create_subscription(UInt32, self.cfg.step_topic, self._on_step, RELIABLE_QOS)
        self.create_subscription(Int64, self.cfg.reset_topic, self._on_reset, RELIABLE_QOS)

        # Requests from callbacks to the worker thread, in arrival order: ("traj", controller topic, msg),
        # ("group", {topic: msg}, None), ("steps", n, None), ("reset", seed, None). In lockstep with
        # lockstep_on_command, the k-th commands of all controllers form a group that ticks once, however the
        # topics interleave on the wire: bit-reproducible runs.
        self._cond = threading.Condition()
        self._events: deque[tuple[str, Any, Any]] = deque()
        self._unpaired: dict[str, deque[Any]] = {g.topic: deque() for g in self.layout.groups}
        self._stop = threading.Event()
        # Counters for diagnostics (written by the worker only).
        self.ticks = 0
        self.rejected = 0
        self.settle_ignored = 0  # commands dropped while the arms settle after a reset
        self.behind_ticks = 0
        self._rt_window: deque[tuple[float, float]] = deque(maxlen=100)  # (wall, sim clock)
        self._last: TickResult | None = None

        self.diag = Diagnostics(self, self.cfg.diagnostics_period, hardware_id="mujoco_sim")
        self.diag.add("sim", self._report)
        self._worker = threading.Thread(target=self._run, name="sim_node_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"{self.cfg.task} seed {self.cfg.seed}, {self.cfg.mode} at {self.cfg.control_hz:g} Hz, cameras "
            f"{list(cams)} {self.cfg.image_height}x{self.cfg.image_width} @ {self.cfg.camera_hz:g} Hz, "
            f"/clock {'on' if self.cfg.publish_clock else 'off'}")

    # ------------------------------------------------------------------ callbacks (queue only)
    def _on_command(self, topic: str, msg: JointTrajectory | Float64MultiArray) -> None:
        with self._cond:
            if self.cfg.mode == "lockstep" and self.cfg.lockstep_on_command:
                self._unpaired[topic].append(msg)
                if all(self._unpaired.values()):
                    self._events.append(("group", {t: q.popleft() for t, q in self._unpaired.items()}, None))
            else:
                self._events.append(("traj", topic, msg))
            self._cond.notify()

    def _on_step(self, msg: UInt32) -> None:
        if self.cfg.mode != "lockstep":
            self.log.warn("step-realtime", f"ignoring {self.cfg.step_topic}: the sim runs in realtime mode")
            return
        with self._cond:
            # Commands still waiting for the other controllers' take effect before the explicit ticks.
            for topic, queue in self._unpaired.items():
                self._events.extend(("traj", topic, m) for m in queue)
                queue.clear()
            self._events.append(("steps", int(msg.data), None))
            self._cond.notify()

    def _on_reset(self, msg: Int64) -> None:
        with self._cond:
            self._events.append(("reset", int(msg.data), None))
            for queue in self._unpaired.values():
                queue.clear()
            self._cond.notify()

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        try:
            self._publish(self.robot.reset(seed=self.cfg.seed, target=self.cfg.target or None), reset=True)
            if self.cfg.mode == "realtime":
                self._run_realtime()
            else:
                self._run_lockstep()
        except Exception as exc:  # noqa: BLE001 - report, never die silently in a thread
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down: a publish raced the context's shutdown (Ctrl-C, the graph stopping)
            self.get_logger().error(f"sim worker stopped: {exc!r}")
            raise
        finally:
            self.env.close()  # the GL context is freed on the thread that made it

    def _take_events(self) -> list[tuple[str, Any, Any]]:
        with self._cond:
            events = list(self._events)
            self._events.clear()
        return events

    def _process(self, events: list[tuple[str, Any, Any]]) -> None:
        """Apply events in order; "group" and "steps" events tick (lockstep only)."""
        for kind, a, b in events:
            if self._stop.is_set():
                return
            if kind == "reset":
                seed = None if a < 0 else a
                self._publish(self.robot.reset(seed=seed, target=self.cfg.target or None), reset=True)
            elif kind == "traj":
                self._command(a, b)
            elif kind == "group":
                for topic, msg in a.items():
                    self._command(topic, msg)
                self._tick()
            elif kind == "steps":
                for _ in range(a):
                    if self._stop.is_set():
                        return
                    self._tick()

    def _command(self, topic: str, msg: JointTrajectory | Float64MultiArray) -> None:
        """Apply one controller's command the way it would: a JointTrajectoryController's trajectory, or a
        position controller's Float64MultiArray (its joints in order, held until the next)."""
        try:
            if isinstance(msg, Float64MultiArray):
                accepted = self.robot.command_position(topic,
                                                       self._from_robot(topic, np.asarray(msg.data, dtype=np.float64)))
            else:
                names, times, positions = trajectory_to_arrays(msg)
                positions = self._from_robot(topic, positions, names)
                accepted = self.robot.command(topic, names, times, positions, to_sec(msg.header.stamp))
            if not accepted:
                self.settle_ignored += 1
        except ValueError as exc:
            self.rejected += 1
            self.log.warn(f"reject-{topic}", f"{topic}: rejected {self.cfg.command_interface} command: {exc}")

    def _from_robot(self, topic: str, positions: np.ndarray, names: list[str] | None = None) -> np.ndarray:
        """One controller's command in the robot's units -> the sim's (policy units), column by column: by `names`
        for a JointTrajectory (JTC takes its joints in any order), else in the group's order. A command of the wrong
        shape or joints passes unchanged: the controller refuses it with the reason."""
        joint_names, idx = self.robot.groups[topic]
        if positions.ndim not in (1, 2) or positions.shape[-1] != len(idx):
            return positions
        if names is not None:
            if sorted(names) != sorted(joint_names):
                return positions
            where = dict(zip(joint_names, idx))
            idx = tuple(where[n] for n in names)
        return (positions - self.mapping.offset[list(idx)]) / self.mapping.scale[list(idx)]

    def _tick(self) -> None:
        self._publish(self.robot.tick())
        self.ticks += 1
        self._rt_window.append((time.monotonic(), self.robot.clock))

    def _run_realtime(self) -> None:
        period = 1.0 / self.cfg.control_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._process(self._take_events())  # no "steps" events arrive in realtime mode
            self._tick()
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -5 * period:  # far behind: do not try to catch up in a burst
                self.behind_ticks += 1
                self.log.warn("behind", "sim is slower than real time (rendering?); skipping catch-up")
                next_t = time.monotonic()
            elif delay > 0:
                self._stop.wait(delay)

    def _run_lockstep(self) -> None:
        idle = self.cfg.idle_republish_period
        while not self._stop.is_set():
            with self._cond:
                if not self._events:
                    self._cond.wait(timeout=idle if idle > 0 else 0.5)
            events = self._take_events()
            if events:
                self._process(events)
            elif idle > 0 and self._last is not None:
                self._publish(self._last, republish=True)

    # ------------------------------------------------------------------ publishing
    def _publish(self, r: TickResult, reset: bool = False, republish: bool = False) -> None:
        stamp = to_time_msg(r.clock)
        if self.clock_pub is not None and not republish:
            self.clock_pub.publish(Clock(clock=stamp))
        for cam, img in r.images.items():  # a republished result carries the latest frames
            header = Header(stamp=stamp, frame_id=self.cfg.camera_frame_id.format(name=cam))
            self.image_pubs[cam].publish(rgb_to_image_msg(img, header))
            self.frames_published += 1
        state, velocity = self.mapping.to_robot(r.state), self.mapping.scale * r.velocity
        for pub, names, idx in self.joint_pubs:
            js = JointState(name=list(names), position=[float(x) for x in state[idx]],
                            velocity=[float(x) for x in velocity[idx]])
            js.header.stamp = stamp
            pub.publish(js)
        if reset and self.instruction_pub is not None:
            self.instruction_pub.publish(String(data=self.env.instruction))
        if not republish:
            self.status_pub.publish(String(data=json.dumps(self.robot.status())))
        if r.images or self._last is None:
            self._last = r
        else:
            self._last = TickResult(r.clock, r.state, r.velocity, self._last.images, r.step)

    def _report(self) -> tuple[int, str, dict[str, Any]]:
        kv: dict[str, Any] = {"mode": self.cfg.mode, "task": self.cfg.task, "seed": self.env.seed,
                              "ticks": self.ticks, "clock": self.robot.clock, "rejected_trajectories": self.rejected,
                              "ignored_while_settling": self.settle_ignored,
                              "behind_events": self.behind_ticks, "frames_published": self.frames_published}
        w = list(self._rt_window)
        if len(w) >= 2 and w[-1][0] > w[0][0]:
            kv["real_time_factor"] = (w[-1][1] - w[0][1]) / (w[-1][0] - w[0][0])
        if not self._worker.is_alive():
            return Diagnostics.ERROR, "sim worker thread stopped", kv
        if self.rejected:
            return Diagnostics.WARN, f"{self.rejected} arm command(s) rejected", kv
        return Diagnostics.OK, f"{self.cfg.mode}, {self.ticks} ticks", kv

    def destroy_node(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `sim_node`."""
    return run_node(SimNode, "sim_node", args)


if __name__ == "__main__":
    sys.exit(main())
