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

"""ros2_control JointTrajectoryController (JTC) semantics for one joint group, without ROS.

The sim node receives `trajectory_msgs/JointTrajectory` on each arm's controller topic and must behave as
the JTC a real robot or Gazebo runs, so that the executor cannot tell the difference:

* `header.stamp` zero means "start now"; otherwise the trajectory starts at that time (same clock as the
  robot's: sim time when the sim publishes /clock).
* Points are reached at `start + time_from_start`; between points positions are interpolated linearly
  (JTC's interpolation for position-only points); before the first point the setpoint moves linearly from
  the setpoint in effect at `start` (JTC with `interpolate_from_desired_state`, `open_loop_control` in older
  releases) or from the measured position (JTC's default: `origin`), so a first point at time_from_start 0 is
  applied at once; after the last point it is held.
* A new trajectory replaces the current one from its start time on (until then the old one continues).
* `joint_names` may come in any order but must be exactly the group's joints (JTC's default
  `allow_partial_joints_goal: false`); times must increase strictly; positions must be finite; a
  trajectory whose last point is already in the past is rejected. An empty trajectory holds the current
  setpoint (JTC cancels and holds position).

Invalid messages raise ValueError with the reason; the node logs it and keeps the previous command.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TIME_EPS = 1e-9  # seconds; times closer than this are the same instant


@dataclass
class _Segment:
    start: float
    times: np.ndarray      # (K,) seconds from start, strictly increasing
    positions: np.ndarray  # (K, J) in the group's joint order
    origin: np.ndarray     # (J,) setpoint at `start`


class TrajectoryFollower:
    """Setpoints of one joint group over time from a stream of JointTrajectory commands."""

    def __init__(self, joint_names: Sequence[str], initial: np.ndarray) -> None:
        self.joint_names = tuple(joint_names)
        if len(set(self.joint_names)) != len(self.joint_names) or not self.joint_names:
            raise ValueError(f"joint names must be unique and non-empty, got {self.joint_names}")
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        self._segments: list[_Segment] = []
        self.hold(initial)
        self.accepted = 0
        self.rejected = 0

    def hold(self, positions: np.ndarray) -> None:
        """Drop all trajectories and hold `positions` (reset, or an empty trajectory)."""
        p = np.asarray(positions, dtype=np.float64)
        if p.shape != (len(self.joint_names),):
            raise ValueError(f"expected {len(self.joint_names)} positions, got shape {p.shape}")
        self._segments = []
        self._hold = p.copy()

    def set_trajectory(self, joint_names: Sequence[str], times: np.ndarray, positions: np.ndarray,
                       stamp: float, now: float, origin: np.ndarray | None = None) -> None:
        """Accept one JointTrajectory (already unpacked); raises ValueError if JTC would reject it.

        `origin`: where the path to the first point starts; None = the setpoint in effect (JTC's
        `interpolate_from_desired_state: true`), the measured position for JTC's default."""
        try:
            self._set(joint_names, times, positions, stamp, now, origin)
        except ValueError:
            self.rejected += 1
            raise
        self.accepted += 1

    def _set(self, joint_names: Sequence[str], times: np.ndarray, positions: np.ndarray,
             stamp: float, now: float, origin: np.ndarray | None) -> None:
        names = list(joint_names)
        if sorted(names) != sorted(self.joint_names):
            missing = sorted(set(self.joint_names) - set(names))
            extra = sorted(set(names) - set(self.joint_names))
            raise ValueError(f"joint_names must be exactly {list(self.joint_names)} (missing {missing}, unknown {extra}"
                             f"{', duplicates' if len(names) != len(set(names)) else ''})")
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        positions = np.asarray(positions, dtype=np.float64)
        start = now if stamp == 0.0 else float(stamp)
        if times.size == 0:
            self.hold(self.command(now))
            return
        if positions.shape != (times.size, len(names)):
            raise ValueError(f"positions shape {positions.shape} does not match {times.size} points x "
                             f"{len(names)} joints")
        if not (np.all(np.isfinite(times)) and np.all(np.isfinite(positions))):
            raise ValueError("trajectory contains NaN or inf")
        if times[0] < 0 or np.any(np.diff(times) <= 0):
            raise ValueError(f"time_from_start must be >= 0 and strictly increasing, got {times.tolist()}")
        if start + times[-1] < now:
            raise ValueError(f"trajectory ends at {start + times[-1]:.3f} s, before now ({now:.3f} s)")
        order = [names.index(n) for n in self.joint_names]
        seg = _Segment(start=start, times=times, positions=positions[:, order],
                       origin=self.command(start) if origin is None else np.asarray(origin, dtype=np.float64).copy())
        # A newer trajectory replaces everything that would start at or after its own start.
        self._segments = [s for s in self._segments if s.start < start] + [seg]

    def command(self, t: float) -> np.ndarray:
        """Setpoint (J,) at time t."""
        active = None
        for s in self._segments:
            if s.start <= t:
                active = s
        if active is None:
            return self._hold.copy()
        tau = t - active.start
        times, pos = active.times, active.positions
        # Clock arithmetic (start + k * dt) is inexact; within TIME_EPS of a point the point itself is
        # the setpoint, so commands sent one point per tick are applied exactly (bit-reproducible runs).
        if tau >= times[-1] - TIME_EPS:
            return pos[-1].copy()
        if tau < times[0] - TIME_EPS:
            a = max(tau, 0.0) / times[0]  # times[0] > TIME_EPS here
            return (1 - a) * active.origin + a * pos[0]
        k = int(np.searchsorted(times, tau + TIME_EPS, side="right")) - 1
        if tau - times[k] <= TIME_EPS:
            return pos[k].copy()
        a = (tau - times[k]) / (times[k + 1] - times[k])
        return (1 - a) * pos[k] + a * pos[k + 1]

    def prune(self, t: float) -> None:
        """Forget trajectories superseded before time t (bounded memory over long runs)."""
        started = [i for i, s in enumerate(self._segments) if s.start <= t]
        if len(started) > 1:
            self._segments = self._segments[started[-1]:]
