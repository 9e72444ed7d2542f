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

"""executor_node: action chunks -> one command per ros2_control controller at the control rate.

Why a node of its own: the control loop must tick at 50 Hz whatever the policy does (slow inference, a
crash, a GPU hiccup), so it lives in its own process with nothing heavy beside it. It is a lifecycle node and
*active* means "may command the robot": inactive, it publishes nothing; deactivating holds at once (one command at
the last commanded position, the plan dropped); activating starts again from the measured position.
`autostart` (default) walks configure + activate at start for graphs without a lifecycle manager. The logic (validation,
merging by timestamp, limits, hold and resume) is ki_vla.control.chunking.ChunkExecutor; which joints go to which
controller, and where /joint_states come from, is ki_vla.joints.RobotLayout (parameters joint_names, command_topics,
command_joints); this file is the ROS wiring: subscriptions, timer, one message per controller, diagnostics.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ki_vla.control.chunking import ChunkExecutor, make_merger
from ki_vla.control.safety import ChunkCheck, ChunkRejected, JointLimits, JointMapping
from ki_vla.joints import JOINT_NAMES, NUM_JOINTS, RobotLayout, state_topic
from ki_vla.paths import require
from ki_vla_ros.config import ExecutorNodeConfig
from ki_vla_ros.msgs import JointStateJoiner, command_trajectory, trajectory_to_arrays
from ki_vla_ros.ros_util import (
    JOINT_STATE_IN_QOS, RELIABLE_QOS, Diagnostics, ThrottledLog, declare_config, now_sec, read_config,
    refuse_unless_unconfigured, run_node, to_duration_msg, to_sec, to_time_msg)
from ki_vla_ros.stats import Counter, RateMeter, Window


def raise_priority(priority: int) -> str:
    """Give the calling (control) thread SCHED_FIFO `priority`, else nice -10; returns what happened.

    Why: on a loaded PC the 50 Hz tick competes with inference and image decoding for the CPU; the
    scheduler, not Python, is then the main source of period jitter. Never fatal: without the privilege the
    node runs at normal priority and says so.
    """
    import os

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return f"control thread runs SCHED_FIFO priority {priority}"
    except (PermissionError, OSError, AttributeError) as exc:
        try:
            os.nice(-10)
            return f"SCHED_FIFO not permitted ({exc}); running at nice -10 instead"
        except (PermissionError, OSError) as exc2:
            return f"could not raise priority ({exc}; {exc2}); running at normal priority"


# Safe to change while commanding: the rate limit applies from the next tick, ramps stay ramps.
LIVE_PARAMETERS = ("velocity_scale",)
# Read once at start-up (read-only): the diagnostics timer, the thread priority and the start-up walk itself.
STARTUP_PARAMETERS = ("diagnostics_period", "realtime_priority", "autostart")
# Everything else is read in each configure (cleanup -> set -> configure), like ros2_controllers' controllers.
CONFIGURE_PARAMETERS = tuple(f.name for f in dataclasses.fields(ExecutorNodeConfig)
                             if f.name not in LIVE_PARAMETERS + STARTUP_PARAMETERS)


class ExecutorNode(LifecycleNode):
    """Merges chunks, enforces limits, holds on stale input, publishes both arms' commands every tick while active.

    Unconfigured: no subscriptions, no publishers, no control timer. configure reads the parameters and builds
    them (a bad value fails the transition with the reason logged, the node stays unconfigured); cleanup releases
    them, so cleanup -> `ros2 param set` -> configure changes a read-on-configure parameter."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("executor_node", **kwargs)
        self.active = False
        # Transitions may come from another thread than the control timer's (a multi-threaded executor, a test):
        # a tick must not publish after the deactivation's hold command.
        self._lock = threading.Lock()
        self.cfg = declare_config(self, ExecutorNodeConfig, live=LIVE_PARAMETERS, on_configure=CONFIGURE_PARAMETERS)
        self.core: ChunkExecutor | None = None
        self._endpoints: list[tuple[Any, Any]] = []   # (destroy, entity) of this configure's topics and timer
        self.log = ThrottledLog(self)
        self.layout: RobotLayout | None = None
        self._publishers: list[Any] = []              # one per layout group
        self.state_topics: list[str] = []
        self._reset_counters()
        if self.cfg.realtime_priority > 0:
            self.get_logger().info(raise_priority(self.cfg.realtime_priority))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.diag = Diagnostics(self, self.cfg.diagnostics_period)
        self.diag.add("control", self._report_control)
        self.diag.add("chunks", self._report_chunks)
        if self.cfg.autostart:
            # No lifecycle manager to report a failed configure to: fail the start with its reason, as every
            # other node does on a bad parameter.
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise ValueError(f"executor_node: configure failed: {self._configure_error}")
            self.trigger_activate()
        else:
            self.get_logger().info("autostart=false: not commanding until configured and activated")

    def _reset_counters(self) -> None:
        self.chunks_ok = RateMeter(5.0)
        self.rejected = Counter()
        self.state_errors = Counter()
        self.period_ms = Window(3000)         # wall-clock tick period: the jitter the robot sees
        self.latency_ms = Window(3000)        # observation stamp -> first command using that chunk (~1 min)
        self.chunk_age_ms = Window(500)       # observation stamp -> chunk arrival
        self.tick_ms = Window(500)            # time spent in one tick
        self.clamped = 0
        self.rate_limited = 0
        self.hold_ticks = 0
        self.hold_reasons = Counter()
        self.commands = 0
        self._last_tick_wall: float | None = None
        self._started_wall = time.perf_counter()
        self._last_state_wall: float | None = None
        self._configure_error = ""

    def _build(self) -> None:
        """Everything the parameters decide: limits, the chunk executor, topics, the control timer."""
        self.cfg = cfg = read_config(self, ExecutorNodeConfig)
        if cfg.control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {cfg.control_hz}")
        layout = cfg.layout()
        urdf = require(cfg.urdf_path)
        self.mapping = JointMapping.from_lists(cfg.joint_scale, cfg.joint_offset, NUM_JOINTS)
        # The URDF's limits are in the robot's units; the executor works in the policy's (then maps each command).
        # parsed once per configure (velocity_scale may change live); named by the policy's joints whatever URDF joint
        # they were read from (urdf_joints), so messages and the gripper rules keep the policy's names
        if cfg.urdf_joints and len(cfg.urdf_joints) != NUM_JOINTS:
            raise ValueError(f"urdf_joints must name {NUM_JOINTS} URDF joints (policy order) or be empty, "
                             f"got {len(cfg.urdf_joints)}")
        read = JointLimits.from_urdf(urdf, list(cfg.urdf_joints) or JOINT_NAMES)
        self._urdf_limits = JointLimits(JOINT_NAMES, read.lower, read.upper, read.velocity)
        self.robot_limits, self.limits = self._scaled_limits(cfg.velocity_scale)
        self.dt = 1.0 / cfg.control_hz
        check = ChunkCheck(max_points=cfg.max_points, jump_velocity_factor=cfg.jump_velocity_factor,
                           max_start_deviation=cfg.max_start_deviation, limit_tolerance=cfg.limit_tolerance,
                           gripper_limit_tolerance=cfg.gripper_limit_tolerance,
                           check_gripper_motion=cfg.check_gripper_motion)
        merger = make_merger(cfg.merge_strategy, cfg.ensembling_m, cfg.max_chunks)
        core = ChunkExecutor(merger, self.limits, self.dt, cfg.chunk_timeout, cfg.lookahead_points, check,
                             state_timeout=cfg.state_timeout, path_tolerance=np.asarray(cfg.path_tolerance),
                             state_jump_tolerance=cfg.state_jump_tolerance, state_confirm=cfg.state_confirm)
        command_type = JointTrajectory if cfg.command_interface == "trajectory" else Float64MultiArray
        self._publishers = [self.create_publisher(command_type, g.topic, RELIABLE_QOS) for g in layout.groups]
        # Each namespace's joint_states fill their joints of one vector; a state counts only once every source has
        # reported within state_timeout (one silent arm must not look like a fresh robot).
        self._joiner = JointStateJoiner(layout.state_sources, cfg.state_timeout)
        self.state_topics = [state_topic(ns, cfg.joint_states_topic) for ns, _, _ in layout.state_sources]
        state_subs = [self.create_subscription(JointState, topic, lambda m, k=k: self._on_joint_state(m, k),
                                               JOINT_STATE_IN_QOS)
                      for k, topic in enumerate(self.state_topics)]
        self._plan_pub = (self.create_publisher(JointTrajectory, cfg.plan_topic, RELIABLE_QOS)
                          if cfg.plan_topic else None)
        self._plan_holding = False   # an empty plan has been announced for the current hold
        self._endpoints = [
            *((self.destroy_publisher, p) for p in self._publishers),
            *(((self.destroy_publisher, self._plan_pub),) if self._plan_pub is not None else ()),
            (self.destroy_subscription,
             self.create_subscription(JointTrajectory, cfg.chunk_topic, self._on_chunk, RELIABLE_QOS)),
            *((self.destroy_subscription, sub) for sub in state_subs),
            (self.destroy_timer, self.create_timer(self.dt, self._tick))]
        with self._lock:
            self.layout = layout
            self.core = core
        self.get_logger().info(
            f"executor: {cfg.control_hz:g} Hz, merge={cfg.merge_strategy} (m={cfg.ensembling_m}), limits from "
            f"{urdf}, chunks on {cfg.chunk_topic} -> {cfg.command_interface} commands on "
            f"{', '.join(g.topic for g in layout.groups)}; joint states from {', '.join(self.state_topics)}")

    def _teardown(self) -> None:
        with self._lock:
            self.core = None
        for destroy, entity in self._endpoints:
            destroy(entity)
        self._endpoints = []

    def _scaled_limits(self, velocity_scale: float) -> tuple[JointLimits, JointLimits]:
        """(the URDF's limits with velocity_scale, the same in policy units): what the executor clamps to."""
        if not 0.0 < velocity_scale <= 1.0:
            raise ValueError(f"velocity_scale must be in (0, 1], got {velocity_scale}")
        u = self._urdf_limits
        robot = JointLimits(u.names, u.lower, u.upper, u.velocity * velocity_scale)
        return robot, robot.in_policy_units(self.mapping)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """velocity_scale (0, 1] applies from the next tick; the read-on-configure ones only while unconfigured;
        the start-up ones are read-only (declare_config)."""
        refused = refuse_unless_unconfigured(params, CONFIGURE_PARAMETERS, self.core is not None, self.get_name())
        if refused is not None:
            return refused
        for p in params:
            if p.name != "velocity_scale":
                continue
            value = p.value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
                return SetParametersResult(successful=False, reason=f"velocity_scale must be in (0, 1], got {value!r}")
            with self._lock:
                if self.core is not None:
                    self.robot_limits, self.limits = self._scaled_limits(float(value))
                    self.core.limits = self.limits
                self.cfg.velocity_scale = float(value)
            self.get_logger().info(f"velocity_scale {float(value):g}: limits updated")
        return SetParametersResult(successful=True)

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()   # a configure that failed half-way must not leave topics behind
        try:
            self._build()
        except (ValueError, FileNotFoundError) as exc:  # rclpy would end in Unconfigured without a word
            self._configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self.core.restart_from_measured()
            self.active = True
        self.get_logger().info("active: commanding the robot")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self.active = False
            if self.core.last_command is not None:  # hold at once: the controller keeps this position
                self._publish(np.repeat(self.core.last_command[None], self.core.lookahead, axis=0))
            self.core.restart_from_measured()
        self.get_logger().info("inactive: holding, not commanding")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.get_logger().info("unconfigured: parameters may be changed, configure reads them again")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: stop commanding, release everything, back to Unconfigured (logged, not silent)."""
        self.get_logger().error(f"lifecycle error in state {state.label!r}: not commanding, released")
        with self._lock:
            self.active = False
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.active:
            self.on_deactivate(state)
        return TransitionCallbackReturn.SUCCESS

    def _on_joint_state(self, msg: JointState, source: int) -> None:
        with self._lock:
            if self.core is None:   # a message in flight across cleanup
                return
            joined = self._joiner.offer(source, msg, time.monotonic(), self._reject_state)
            if joined is None:
                return   # invalid, or another source's joint_states are missing or stale: nothing to believe yet
            believed = self.core.on_state(self.mapping.from_robot(joined[0]), now_sec(self))
        if not believed:
            self.log.warn("joint_state_jump", "joint_states jumped beyond state_jump_tolerance: not believed until "
                                              f"{self.cfg.state_confirm} samples agree")
            return
        self._last_state_wall = time.monotonic()

    def _reject_state(self, source: int, exc: ValueError) -> None:
        self.state_errors.inc("invalid")
        self.log.warn(f"joint_state{source}", f"ignoring {self.state_topics[source]}: {exc}")

    def _on_chunk(self, msg: JointTrajectory) -> None:
        now = now_sec(self)
        stamp = to_sec(msg.header.stamp)
        try:
            names, times, positions = trajectory_to_arrays(msg)
            with self._lock:
                if self.core is None:
                    return
                try:
                    self.core.on_chunk(names, times, positions, stamp, now)
                finally:   # accepted or not, the policy's real-time chunking waits for the plan this chunk leaves
                    self._publish_plan(msg.header.stamp, now, len(times))
        except (ChunkRejected, ValueError) as exc:  # ValueError: ragged message from trajectory_to_arrays
            self.rejected.inc(exc.reason if isinstance(exc, ChunkRejected) else "malformed")
            self.log.warn("chunk", f"rejected action chunk: {exc}")
            return
        self.chunks_ok.tick(now)
        self.chunk_age_ms.add((now - stamp) * 1e3)

    def _publish_plan(self, chunk_stamp: Any, now: float, points: int) -> None:
        """What this executor has committed to from `now` (policy names and units): `points` targets one control
        period apart, stamped with the chunk that produced it (time_from_start counts from that stamp); no points
        while it holds. Called with the lock held."""
        if self._plan_pub is None or self.core is None:
            return
        msg = JointTrajectory(joint_names=list(JOINT_NAMES))
        msg.header.stamp = chunk_stamp
        plan = None if self.core.holding and self.core.last_chunk_time is None else self.core.merger.plan(
            now, max(points, 2), self.dt)
        if plan is not None:
            offset = now - to_sec(chunk_stamp)
            for k, row in enumerate(plan):
                msg.points.append(JointTrajectoryPoint(positions=row.tolist(),
                                                       time_from_start=to_duration_msg(offset + k * self.dt)))
        self._plan_holding = plan is None
        self._plan_pub.publish(msg)

    def _tick(self) -> None:
        wall = time.perf_counter()
        if self._last_tick_wall is not None:
            self.period_ms.add((wall - self._last_tick_wall) * 1e3)
        self._last_tick_wall = wall
        with self._lock:
            if self.active and self.core is not None:
                self._control(wall)

    def _control(self, wall: float) -> None:
        now = now_sec(self)
        violations = self.core.path_violations
        cmd = self.core.tick(now)
        if cmd is None:
            self.log.warn("no_state", f"waiting for {' + '.join(self.state_topics)} before commanding anything")
            return
        if self.core.path_violations > violations:
            self.log.warn("path_tolerance", f"path tolerance exceeded: {self.core.last_violation}")
        if cmd.hold_reason == "stale_state":
            self.log.warn("stale_state", f"no {' + '.join(self.state_topics)} for more than "
                          f"{self.cfg.state_timeout:g} s: holding the last command")
        if cmd.holding:
            self.hold_ticks += 1
            self.hold_reasons.inc(cmd.hold_reason)
            if not self._plan_holding and self._plan_pub is not None:   # nothing committed: RTC's next chunk is free
                self._plan_holding = True
                self._plan_pub.publish(JointTrajectory(joint_names=list(JOINT_NAMES),
                                                       header=Header(stamp=to_time_msg(now))))
            if not self.cfg.hold_before_first_chunk and self.core.last_chunk_time is None:
                return
        for stamp in cmd.first_used:
            self.latency_ms.add((now - stamp) * 1e3)
        self.clamped += cmd.clamped
        self.rate_limited += cmd.rate_limited
        self._publish(cmd.positions)
        self.tick_ms.add((time.perf_counter() - wall) * 1e3)

    def _publish(self, positions: np.ndarray) -> None:
        """(lookahead, 14) -> each controller's command: a JointTrajectory with every look-ahead point, or the next
        position alone for a streaming position controller (it holds each value until the next)."""
        robot = self.mapping.to_robot(positions)
        for group, pub in zip(self.layout.groups, self._publishers):
            part = robot[:, list(group.indices)]
            if self.cfg.command_interface == "position":
                pub.publish(Float64MultiArray(data=[float(x) for x in part[0]]))
            else:
                pub.publish(command_trajectory(group.joint_names, part, self.dt, self.cfg.lookahead_velocities))
        self.commands += 1

    def _report_control(self) -> tuple[int, str, dict[str, Any]]:
        core = self.core
        if core is None:
            return Diagnostics.WARN, "unconfigured (lifecycle): not commanding", {"active": False}
        per = self.period_ms.values()
        kv: dict[str, Any] = {"commands": self.commands, "hold_ticks": self.hold_ticks,
                              "holding": core.holding, "hold_reason": core.hold_reason,
                              "path_violations": core.path_violations,
                              "clamped_values": self.clamped,
                              "rate_limited_values": self.rate_limited, "target_period_ms": self.dt * 1e3}
        kv.update({f"hold_ticks[{k}]": v for k, v in self.hold_reasons.counts.items()})
        err = core.tracking_error()
        if err is not None:
            kv["tracking_error_max"] = float(err.max())
        if per.size:
            kv.update({f"period_ms_p{q}": float(np.percentile(per, q)) for q in (1, 50, 99)})
            kv["jitter_ms_p99"] = float(np.percentile(np.abs(per - self.dt * 1e3), 99))
        kv.update({f"tick_ms_{k}": v for k, v in self.tick_ms.percentiles().items()})
        kv.update({f"joint_state_errors[{k}]": v for k, v in self.state_errors.counts.items()})
        state_age = time.monotonic() - self._last_state_wall if self._last_state_wall is not None else float("inf")
        kv["joint_states_age_s"] = state_age
        kv["time_jumps_back"] = core.time_jumps
        kv["joint_state_jumps_ignored"] = core.state_jumps_ignored
        since_tick = time.perf_counter() - (self._last_tick_wall or self._started_wall)
        if since_tick > max(1.0, 20 * self.dt):
            clock = (" (use_sim_time is set: is anything publishing /clock?)"
                     if self.get_parameter("use_sim_time").value else "")
            return Diagnostics.ERROR, f"control loop not ticking: last tick {since_tick:.1f} s ago{clock}", kv
        kv["active"] = self.active
        if not self.active:
            return Diagnostics.WARN, "inactive (lifecycle): not commanding", kv
        if core.last_command is None:
            return Diagnostics.WARN, f"no {' + '.join(self.state_topics)} yet: not commanding", kv
        if state_age > self.cfg.state_timeout:
            return Diagnostics.WARN, f"{' + '.join(self.state_topics)} silent for {state_age:.1f} s: holding", kv
        if core.holding and core.last_violation and core.last_chunk_time is None:
            return Diagnostics.WARN, f"holding after a path tolerance violation: {core.last_violation}", kv
        if core.holding and core.timed_out(now_sec(self)):
            return Diagnostics.WARN, (f"input timed out: no chunk for {self.cfg.chunk_timeout:g} s after the last one "
                                      "ended; holding"), kv
        if core.holding:
            return Diagnostics.WARN, "holding: no chunk covers now", kv
        return Diagnostics.OK, "executing", kv

    def _report_chunks(self) -> tuple[int, str, dict[str, Any]]:
        core = self.core
        if core is None:
            return Diagnostics.WARN, "unconfigured (lifecycle)", {}
        now = now_sec(self)
        kv: dict[str, Any] = {"chunk_rate_hz": self.chunks_ok.rate(now), "accepted": self.chunks_ok.total,
                              "rejected": self.rejected.total(), "active_chunks": len(core.merger.chunks)}
        kv.update({f"latency_ms_{k}": v for k, v in self.latency_ms.percentiles().items()})
        kv.update({f"chunk_age_ms_{k}": v for k, v in self.chunk_age_ms.percentiles().items()})
        kv.update({f"rejected[{k}]": v for k, v in self.rejected.counts.items()})
        if self.rejected.total():
            return Diagnostics.WARN, f"{self.rejected.total()} chunk(s) rejected", kv
        return Diagnostics.OK, f"{kv['chunk_rate_hz']:.1f} chunks/s", kv


def main(args: list[str] | None = None) -> int:
    """Console script `executor_node`."""
    return run_node(ExecutorNode, "executor_node", args)


if __name__ == "__main__":
    sys.exit(main())
