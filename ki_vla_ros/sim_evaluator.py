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

"""sim_evaluator: runs closed-loop episodes against a running graph (sim_node + camera/policy/executor).

For each episode it resets the sim with the next seed, then follows the sim's per-tick status until success or
the time limit (ki_vla.eval.closed_loop.EpisodeTracker). Meanwhile it measures what the robot would see:
observation-to-chunk latency (chunk receipt time minus the chunk's observation stamp, on the node clock, so sim
time under use_sim_time), the executor's command rate, and records camera frames of the first `videos`
episodes. Results are written as JSON after every episode (a crash keeps what was measured) to `output`; the
process exits when all episodes are done. `ki-vla eval-sim` starts it and builds the report.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, Int64, String, UInt32
from trajectory_msgs.msg import JointTrajectory

from ki_vla.atomic import write_json_atomic
from ki_vla.joints import TRAJECTORY_TOPICS
from ki_vla.eval.closed_loop import EpisodeResult, EpisodeTracker
from ki_vla.eval.video import mp4_bytes
from ki_vla.control.chunking import Chunk
from ki_vla_ros.msgs import image_msg_to_rgb, trajectory_to_arrays
from ki_vla_ros.ros_util import CAMERA_IN_QOS, RELIABLE_QOS, declare_config, now_sec, run_node, to_sec


@dataclass
class SimEvaluatorConfig:
    episodes: int = 10
    seed: int = 0
    max_seconds: float = 8.0                 # sim seconds per episode before it counts as a failure
    output: str = "eval_results.json"       # results JSON; videos are written beside it
    videos: int = 3                          # record the first N episodes
    video_topic: str = "/cam_high/image_raw"
    video_every: int = 2                     # keep every n-th frame
    status_topic: str = "/sim/status"
    reset_topic: str = "/sim/reset"
    step_topic: str = "/sim/step"
    lockstep_kick: bool = False              # lockstep sim: send one /sim/step after each reset to start the loop
    chunk_topic: str = "/ki_vla/action_chunk"
    command_topic: str = f"/{TRAJECTORY_TOPICS[0]}"   # one controller's commands: the control rate and the jerk
    command_interface: str = "trajectory"    # what is on command_topic (the executor's): trajectory | position
    plan_topic: str = "/ki_vla/executor_plan"   # the executor's plan at each accepted chunk: the switch jumps
    executor_node: str = "executor_node"     # whose /diagnostics chunk counts (accepted / rejected) are read
    ready_timeout: float = 180.0             # wall seconds to wait for the first chunk (model load, warm-up)

    def validate(self) -> None:
        if self.episodes < 1 or self.max_seconds <= 0 or self.video_every < 1 or self.videos < 0:
            raise ValueError("episodes >= 1, max_seconds > 0, video_every >= 1 and videos >= 0 are required")
        if self.command_interface not in ("trajectory", "position"):
            raise ValueError(f"command_interface must be trajectory or position, got {self.command_interface!r}")


class SimEvaluator(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim_evaluator", **kwargs)
        self.cfg = declare_config(self, SimEvaluatorConfig)
        self.cfg.validate()
        self.tracker = EpisodeTracker(self.cfg.episodes, self.cfg.seed, self.cfg.max_seconds)
        self.out = Path(self.cfg.output)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.ready = False
        self.error = ""
        self._frames: list[np.ndarray] = []
        self._frame_count = 0
        self._command_times: list[float] = []
        self._commands: list[np.ndarray] = []
        self._plan: Chunk | None = None   # the executor's newest plan
        self._jumps: list[float] = []
        self._executor_counts = {"accepted": 0, "rejected": 0}
        self._counts_at_start = dict(self._executor_counts)
        self._started_wall = time.monotonic()
        self.reset_pub = self.create_publisher(Int64, self.cfg.reset_topic, RELIABLE_QOS)
        self.step_pub = self.create_publisher(UInt32, self.cfg.step_topic, RELIABLE_QOS)
        self.create_subscription(String, self.cfg.status_topic, self._on_status, RELIABLE_QOS)
        self.create_subscription(JointTrajectory, self.cfg.chunk_topic, self._on_chunk, RELIABLE_QOS)
        if self.cfg.command_interface == "trajectory":
            self.create_subscription(JointTrajectory, self.cfg.command_topic, self._on_command, RELIABLE_QOS)
        else:
            self.create_subscription(Float64MultiArray, self.cfg.command_topic, self._on_command, RELIABLE_QOS)
        if self.cfg.plan_topic:
            self.create_subscription(JointTrajectory, self.cfg.plan_topic, self._on_plan, RELIABLE_QOS)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, RELIABLE_QOS)
        if self.cfg.videos > 0:
            self.create_subscription(Image, self.cfg.video_topic, self._on_image, CAMERA_IN_QOS)
        self.create_timer(0.5, self._watchdog)
        self.get_logger().info(f"waiting for the policy's first chunk on {self.cfg.chunk_topic} "
                               f"(up to {self.cfg.ready_timeout:.0f} s), then {self.cfg.episodes} episodes")

    # ---- callbacks ---------------------------------------------------------------------------------------
    def _on_chunk(self, msg: JointTrajectory) -> None:
        with self._lock:
            if not self.ready:
                self.ready = True
                self._start_episode()
                return
            ep = self.tracker.current
            if self.tracker.running:
                ep.chunks += 1
                ep.latency_ms.append((now_sec(self) - to_sec(msg.header.stamp)) * 1e3)

    def _on_command(self, msg: JointTrajectory | Float64MultiArray) -> None:
        """A controller command: a trajectory's first point, or a position controller's setpoint."""
        with self._lock:
            if self.tracker.running:
                self._command_times.append(now_sec(self))
                if isinstance(msg, Float64MultiArray):
                    self._commands.append(np.asarray(msg.data, dtype=np.float64))
                elif msg.points:
                    self._commands.append(np.asarray(msg.points[0].positions, dtype=np.float64))

    def _on_plan(self, msg: JointTrajectory) -> None:
        try:
            _, times, positions = trajectory_to_arrays(msg)
        except ValueError:
            return
        with self._lock:
            if len(times) < 2:          # the executor holds: the next chunk starts from nothing committed
                self._plan = None
                return
            try:
                plan = Chunk(stamp=to_sec(msg.header.stamp) + float(times[0]), dt=float(np.mean(np.diff(times))),
                             actions=positions)
            except ValueError:          # times not increasing: not a plan this evaluator can read
                return
            if self._plan is not None and self.tracker.running:
                before = self._plan.at(plan.stamp)
                if before is not None and before.shape == positions[0].shape:
                    self._jumps.append(float(np.abs(positions[0] - before).max()))
            self._plan = plan

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if not status.name.startswith(f"{self.cfg.executor_node}:"):
                continue
            values = {kv.key: kv.value for kv in status.values}
            with self._lock:
                for key in self._executor_counts:
                    if key in values:
                        try:
                            self._executor_counts[key] = int(float(values[key]))
                        except ValueError:
                            pass

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            ep = self.tracker.current
            if not self.tracker.running or ep.index >= self.cfg.videos:
                return
            self._frame_count += 1
            if self._frame_count % self.cfg.video_every == 0:
                try:
                    self._frames.append(image_msg_to_rgb(msg, use_cv_bridge=False))
                except ValueError as exc:
                    self.get_logger().warning(f"video frame skipped: {exc}")

    def _on_status(self, msg: String) -> None:
        try:
            status = json.loads(msg.data)
        except json.JSONDecodeError:
            self.get_logger().warning("unreadable sim status (not JSON); ignored")
            return
        with self._lock:
            done = self.tracker.on_status(status)
            if done is None:
                return
            self._finish_episode(done)
            if self.tracker.done:
                self.context.try_shutdown()  # ends the spin: main() exits
            else:
                self._start_episode()

    def _watchdog(self) -> None:
        if not self.ready and time.monotonic() - self._started_wall > self.cfg.ready_timeout:
            self.error = (f"no chunk on {self.cfg.chunk_topic} within {self.cfg.ready_timeout:.0f} s: is the policy "
                          "node up?")
            self.get_logger().error(self.error)
            self._write()
            self.context.try_shutdown()

    # ---- episodes ----------------------------------------------------------------------------------------
    def _start_episode(self) -> None:
        seed = self.tracker.start()
        self._frames, self._frame_count, self._command_times, self._commands, self._jumps = [], 0, [], [], []
        self._plan = None
        self._counts_at_start = dict(self._executor_counts)
        self.reset_pub.publish(Int64(data=seed))
        if self.cfg.lockstep_kick:
            self.step_pub.publish(UInt32(data=1))
        self.get_logger().info(f"episode {self.tracker.current.index + 1}/{self.cfg.episodes}: seed {seed}")

    def _finish_episode(self, ep: EpisodeResult) -> None:
        times = self._command_times
        if len(times) >= 2 and times[-1] > times[0]:
            ep.command_rate_hz = (len(times) - 1) / (times[-1] - times[0])
            if len(self._commands) >= 4 and len({c.shape for c in self._commands}) == 1:
                dt = (times[-1] - times[0]) / (len(times) - 1)
                ep.jerk = float(np.abs(np.diff(np.asarray(self._commands), n=3, axis=0)).mean() / dt ** 3)
        if self._jumps:
            ep.switch_jump_mean, ep.switch_jump_max = float(np.mean(self._jumps)), float(np.max(self._jumps))
        ep.accepted_chunks = self._executor_counts["accepted"] - self._counts_at_start["accepted"]
        ep.rejected_chunks = self._executor_counts["rejected"] - self._counts_at_start["rejected"]
        if ep.index < self.cfg.videos and self._frames:
            name = f"episode_{ep.index:03d}_seed{ep.seed}.mp4"
            fps = 25.0 / self.cfg.video_every
            (self.out.parent / name).write_bytes(mp4_bytes(self._frames, fps))
            ep.video = name
        self.get_logger().info(f"episode {ep.index + 1}: {'success' if ep.success else 'failure'} "
                               f"(reward fraction {ep.reward_fraction:.2f}, {ep.duration_s:.1f} s, {ep.chunks} chunks)")
        self._write()

    def _write(self) -> None:
        write_json_atomic({"results": [asdict(r) for r in self.tracker.results], "error": self.error,
                           "complete": self.tracker.done}, self.out, indent=None)


def main(args: list[str] | None = None) -> int:
    """Console entry: runs until every episode is done (exit 0) or the policy never came up (exit 1)."""
    return run_node(SimEvaluator, "sim_evaluator", args, exit_code=lambda node: 1 if node.error else 0)


if __name__ == "__main__":
    sys.exit(main())
