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

"""The sim as a ros2_control robot, minus ROS: one controller per joint group driving `BimanualSim`.

The groups are a robot layout's controllers (ki_vla.joints.RobotLayout: by default one 7-joint controller per arm;
an Interbotix layout has a 6-joint arm and a 1-joint gripper controller per arm, with unprefixed names), each a
JointTrajectoryController or a streaming position controller.

`SimRobot` is what `ki_vla_ros/sim_node.py` wires to topics. Keeping it here means the controller
semantics, the clock and the camera schedule are tested without DDS, and the node stays wiring.

Clock: `clock` is the robot's time in seconds. It starts at `clock_start` and keeps running across
episode resets (ROS /clock must never go backwards), so an episode's sim time is `clock - episode_start`.
Each `tick()` advances one control period; the command applied during the tick is the controllers'
setpoint at the *end* of the tick, so a trajectory point at time_from_start = dt is reached on the next
tick (what the executor's commands expect).

Reset settle: a reset teleports the arms home, which no real robot does. The executor learns of it only from the
next joint state, so commands it computed for the old pose are still on the wire and, applied after the reset,
would throw the arms back at the actuators' full (unphysical) speed: measured in the ROS graph, the right wrist went
1.5 rad past its limit in one tick and stayed jammed there for the episode. For `reset_settle` seconds after a reset
the controllers therefore hold the home pose and ignore commands (`command` returns False), time in which the
executor sees the new pose and re-anchors (its path tolerance).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ki_vla.joints import LEFT_JOINTS, NUM_JOINTS, RIGHT_JOINTS
from ki_vla.sim.scenes import BimanualSim
from ki_vla.sim.trajectory import TrajectoryFollower

# group name -> (joint names as its controller calls them, their indices in the 14-D state)
Groups = dict[str, tuple[tuple[str, ...], tuple[int, ...]]]
JTC_ORIGINS = ("command", "measured")
ARMS: Groups = {"left": (LEFT_JOINTS, tuple(range(7))), "right": (RIGHT_JOINTS, tuple(range(7, NUM_JOINTS)))}


@dataclass
class TickResult:
    """What a tick produced: the robot clock, joint state, images when the camera schedule fired."""

    clock: float
    state: np.ndarray
    velocity: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)
    step: int = 0


class SimRobot:
    """BimanualSim + per-group controller semantics + a monotonic clock + camera decimation.

    camera_every: render the cameras on every n-th tick (and at reset), e.g. 2 for 25 Hz at 50 Hz control.
    groups: the controllers (default one per arm, "left" and "right"); together they must cover the 14 joints once.
    jtc_origin: where a JointTrajectoryController starts a new trajectory. "command" (JTC with
      `interpolate_from_desired_state: true`): from its last setpoint, and physics follows each tick's end setpoint.
      "measured" (JTC's default): from the measured position, and the controller updates at every physics substep,
      so a 50 Hz stream of one-point commands to a lagging arm becomes the sawtooth reference a real JTC produces
      (the arm under-tracks: test/test_sim_robot.py measures it).
    """

    def __init__(self, env: BimanualSim, camera_every: int = 1, clock_start: float = 0.0,
                 reset_settle: float = 0.0, groups: Groups | None = None, jtc_origin: str = "command") -> None:
        if jtc_origin not in JTC_ORIGINS:
            raise ValueError(f"jtc_origin must be one of {list(JTC_ORIGINS)}, got {jtc_origin!r}")
        self.jtc_origin = jtc_origin
        if camera_every < 1:
            raise ValueError(f"camera_every must be >= 1, got {camera_every}")
        if not reset_settle >= 0:
            raise ValueError(f"reset_settle must be >= 0 s, got {reset_settle}")
        self.env = env
        self.camera_every = int(camera_every)
        self.reset_settle = float(reset_settle)
        self.clock = float(clock_start)
        self.episode_start = self.clock
        self._settle_until = -np.inf
        self.groups = dict(ARMS if groups is None else groups)
        covered = sorted(i for _, idx in self.groups.values() for i in idx)
        if covered != list(range(NUM_JOINTS)):
            raise ValueError(f"controller groups must cover joints 0..{NUM_JOINTS - 1} once each, got {covered}")
        state = env.state()
        self.controllers = {g: TrajectoryFollower(names, state[list(idx)]) for g, (names, idx) in self.groups.items()}

    @property
    def dt(self) -> float:
        return self.env.dt

    def reset(self, seed: int | None = None, target: str | None = None) -> TickResult:
        """New episode (clock keeps running); controllers hold the home pose."""
        obs = self.env.reset(seed=seed, target=target, render=False)
        self.episode_start = self.clock
        self._settle_until = self.clock + self.reset_settle
        for g, ctrl in self.controllers.items():
            ctrl.hold(obs["state"][list(self.groups[g][1])])
        return TickResult(self.clock, obs["state"], obs["velocity"], self.env.render(), self.env.step_count)

    def command(self, arm: str, joint_names: Sequence[str], times: np.ndarray, positions: np.ndarray,
                stamp: float) -> bool:
        """One JointTrajectory for controller group `arm`; stamp 0 = start now. Raises ValueError.

        Returns False when the command was ignored because the arms are settling after a reset."""
        if arm not in self.controllers:
            raise ValueError(f"controller must be one of {list(self.controllers)}, got {arm!r}")
        if self.clock < self._settle_until - 1e-9:
            return False
        measured = self.env.state()[list(self.groups[arm][1])] if self.jtc_origin == "measured" else None
        self.controllers[arm].set_trajectory(joint_names, times, positions, stamp, self.clock, origin=measured)
        return True

    def command_position(self, arm: str, positions: np.ndarray) -> bool:
        """One streaming position command for `arm` (a JointGroupPositionController's Float64MultiArray: the arm's
        joints in its controller's order, held until the next). Raises ValueError; False while settling."""
        if arm not in self.controllers:
            raise ValueError(f"controller must be one of {list(self.controllers)}, got {arm!r}")
        ctrl = self.controllers[arm]
        q = np.asarray(positions, dtype=np.float64).reshape(-1)
        if q.shape != (len(ctrl.joint_names),) or not np.all(np.isfinite(q)):
            ctrl.rejected += 1
            raise ValueError(f"expected {len(ctrl.joint_names)} finite positions ({', '.join(ctrl.joint_names)}), "
                             f"got {q.tolist()[:16]}")
        if self.clock < self._settle_until - 1e-9:
            return False
        ctrl.hold(q)
        ctrl.accepted += 1
        return True

    def setpoint(self, t: float) -> np.ndarray:
        """14-D command at robot time t (our joint order)."""
        q = np.empty(NUM_JOINTS)
        for g, ctrl in self.controllers.items():
            q[list(self.groups[g][1])] = ctrl.command(t)
        return q

    def tick(self) -> TickResult:
        """Advance one control period; render if the camera schedule says so."""
        t_next = self.clock + self.dt
        if self.jtc_origin == "measured":   # the controller's setpoint at every substep, not only at the tick's end
            h = self.dt / self.env.substeps
            command = np.stack([self.setpoint(self.clock + (k + 1) * h) for k in range(self.env.substeps)])
        else:
            command = self.setpoint(t_next)
        obs = self.env.step(command, render=False)
        # Sim time is the source of truth; avoid float drift over long runs.
        self.clock = self.episode_start + self.env.step_count * self.dt
        for ctrl in self.controllers.values():
            ctrl.prune(self.clock)
        images = self.env.render() if self.env.step_count % self.camera_every == 0 else {}
        return TickResult(self.clock, obs["state"], obs["velocity"], images, self.env.step_count)

    def status(self) -> dict:
        """Episode status for evaluators: seed, step, episode time, reward, success, instruction."""
        return {"task": self.env.config.task, "seed": self.env.seed, "step": self.env.step_count,
                "episode_time": round(self.clock - self.episode_start, 6), "clock": round(self.clock, 6),
                "reward": self.env.reward(), "max_reward": self.env.max_reward, "success": self.env.success(),
                "instruction": self.env.instruction, "target": self.env.target,
                "wrong_cube_moved": self.env.wrong_cube_moved()}
