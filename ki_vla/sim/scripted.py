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

"""Scripted demonstrations: end-effector waypoints -> joint-space trajectories via numerical IK.

The ACT paper's scripted policies move mocap bodies welded to the grippers; our scenes are joint
position controlled (as the real robot), so the waypoints are solved to joint targets here:

1. A task script reads the privileged object poses at reset and lays out, per arm, a few timed
   waypoints of the grasp site (between the finger pads): position, orientation and gripper opening.
2. `interpolate_waypoints` turns them into one target pose per 50 Hz control tick (linear in position
   and gripper, spherical-linear in orientation).
3. `ArmIK` solves each target with damped least squares on the site Jacobian (`mj_jacSite`), warm
   started from the previous tick, so a handful of iterations per tick suffice.

The result is an open-loop (T, 14) joint command array in `JOINT_NAMES` order, which is also what the
datasets record as the action. Open loop is deliberate (as in ACT): the demonstration is then a
function of the seed only, and the position actuators' tracking error is part of the physics.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from ki_vla.joints import CONTROL_HZ, GRIPPER_INDICES, NUM_JOINTS
from ki_vla.sim.scenes import COLOR_BODIES, TASKS, BimanualSim

SIDES = ("left", "right")
NOISE_TAU_S = 0.3  # correlation time of the execution noise (`execution_noise`): smooth, arm-like wobble
NOISE_SPEED_REF = 0.5  # rad/s: planned arm speed at which the execution noise is at half strength (`motion_envelope`)


# ---------------------------------------------------------------------------------------- rotations
def gripper_rotation(side: str, pitch: float, roll: float = 0.0) -> np.ndarray:
    """World rotation matrix of a gripper pointing away from its own base along world x.

    side: "left" (base at -x, points +x) or "right" (base at +x, points -x).
    pitch: radians the approach axis tilts down from horizontal (pi/2 = straight down).
    roll: radians about the approach axis; 0 has the fingers closing along world y, pi/2 along z.
    Columns are the gripper link's x (approach), y (finger travel) and z axes, matching the home pose
    (pitch about -0.1) for roll 0.
    """
    if side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    f = 1.0 if side == "left" else -1.0
    x = np.array([f * np.cos(pitch), 0.0, -np.sin(pitch)])
    y0 = np.array([0.0, f, 0.0])
    z0 = np.cross(x, y0)
    y = np.cos(roll) * y0 + np.sin(roll) * z0
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=1)


def _mat_to_quat(rot: np.ndarray) -> np.ndarray:
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(rot, dtype=np.float64).reshape(9))
    return q


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    m = np.empty(9)
    mujoco.mju_quat2Mat(m, q)
    return m.reshape(3, 3)


def slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (shortest arc)."""
    q0, q1 = np.asarray(q0, float), np.asarray(q1, float)
    dot = float(q0 @ q1)
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: lerp is exact enough and avoids dividing by sin(~0)
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (world frame) rotating `current` onto `target`."""
    q = _mat_to_quat(target @ current.T)
    v = np.empty(3)
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


# ---------------------------------------------------------------------------------------- IK
@dataclass(frozen=True)
class IKConfig:
    """Damped least squares settings. damping trades accuracy near singularities for smooth steps;
    rot_weight (metres per radian) balances orientation against position error."""

    damping: float = 1e-3
    singular_damping: float = 0.05  # extra damping as the smallest singular value falls below singular_band
    singular_band: float = 0.04
    rot_weight: float = 0.2
    max_iterations: int = 50
    tolerance: float = 1e-4
    max_step: float = 0.25  # rad per iteration, keeps far-away targets from overshooting
    posture_gain: float = 0.5  # null-space pull of forearm_roll / wrist_rotate toward 0 (see ArmIK.solve)


class ArmIK:
    """Inverse kinematics of one arm's grasp site over its 6 joints (fingers excluded).

    Uses a private MjData so solving never disturbs the simulation being scripted.
    """

    def __init__(self, model: mujoco.MjModel, side: str, config: IKConfig = IKConfig()) -> None:
        if side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        self.model, self.side, self.config = model, side, config
        self.data = mujoco.MjData(model)
        names = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
        jids = [model.joint(f"vx300s_{side}/{n}").id for n in names]
        self.qpos_idx = np.array([model.jnt_qposadr[j] for j in jids])
        self.dof_idx = np.array([model.jnt_dofadr[j] for j in jids])
        self.lower = model.jnt_range[jids, 0].copy()
        self.upper = model.jnt_range[jids, 1].copy()
        self.site = model.site(f"{side}_grasp").id
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grasp site position (3,) and rotation (3, 3) for arm joints q (6,)."""
        self.data.qpos[self.qpos_idx] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(self, pos: np.ndarray, rot: np.ndarray, q0: np.ndarray) -> tuple[np.ndarray, float]:
        """Joints reaching (pos, rot) from the initial guess q0; returns (q, residual).

        The residual is the weighted 6-D error norm (metres); callers decide what is acceptable.
        Near the wrist singularity (wrist_angle through 0, where the forearm-roll and wrist-rotate axes line up)
        the pose stops fixing roll and rotate separately, and lightly damped least squares drifted into the
        flipped wrist branch (roll and rotate at +-pi, their joint limits, on either side from episode to
        episode: demonstrations no policy can learn). Two things keep the solution on the unflipped branch:
        damping that grows near the singularity so the solver does not spin along the near-null direction
        (and stays light elsewhere, for accuracy), and a secondary task in the
        Jacobian's null space pulling roll and rotate toward 0 (applied on every solve, even an already
        converged one). Measured on transfer_cube seeds 0-9: no flips, scripted success unchanged, worst
        residual under 2 cm.
        """
        cfg, m, d = self.config, self.model, self.data
        q = np.clip(np.asarray(q0, float).copy(), self.lower, self.upper)
        err_norm = np.inf
        for it in range(cfg.max_iterations):
            p, r = self.forward(q)
            err = np.concatenate([pos - p, cfg.rot_weight * rotation_error(rot, r)])
            err_norm = float(np.linalg.norm(err))
            if err_norm < cfg.tolerance and it > 0:
                break
            mujoco.mj_comPos(m, d)  # mj_jacSite needs com-based quantities after mj_kinematics
            mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self.site)
            jac = np.vstack([self._jacp[:, self.dof_idx], cfg.rot_weight * self._jacr[:, self.dof_idx]])
            # Adaptive damping (Chiaverini): light where the arm is well conditioned, heavy near a singularity.
            sigma_min = np.linalg.svd(jac, compute_uv=False)[-1]
            lam2 = cfg.damping**2 + (cfg.singular_damping**2 * (1.0 - (sigma_min / cfg.singular_band) ** 2)
                                     if sigma_min < cfg.singular_band else 0.0)
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + lam2 * np.eye(6))
            posture = np.zeros(6)
            posture[[3, 5]] = -cfg.posture_gain * q[[3, 5]]  # forearm_roll, wrist_rotate toward 0
            dq = pinv @ err + (np.eye(6) - pinv @ jac) @ posture
            step = np.max(np.abs(dq))
            if step > cfg.max_step:
                dq *= cfg.max_step / step
            q = np.clip(q + dq, self.lower, self.upper)
        return q, err_norm


# ---------------------------------------------------------------------------------------- waypoints
@dataclass
class Waypoint:
    """Grasp-site target of one arm at time t (seconds from episode start); gripper 0 closed .. 1 open."""

    t: float
    pos: np.ndarray
    rot: np.ndarray
    gripper: float


def interpolate_waypoints(waypoints: list[Waypoint], num_steps: int, dt: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tick targets: positions (T, 3), rotations (T, 3, 3), grippers (T,). Holds the last waypoint."""
    if not waypoints:
        raise ValueError("need at least one waypoint")
    times = [w.t for w in waypoints]
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError(f"waypoint times must increase strictly, got {times}")
    quats = [_mat_to_quat(w.rot) for w in waypoints]
    pos = np.empty((num_steps, 3))
    rot = np.empty((num_steps, 3, 3))
    grip = np.empty(num_steps)
    k = 0
    for i in range(num_steps):
        t = i * dt
        while k + 1 < len(waypoints) and t >= waypoints[k + 1].t:
            k += 1
        a = waypoints[k]
        if k + 1 == len(waypoints) or t <= a.t:
            pos[i], rot[i], grip[i] = a.pos, a.rot, a.gripper
            continue
        b = waypoints[k + 1]
        s = (t - a.t) / (b.t - a.t)
        pos[i] = (1 - s) * a.pos + s * b.pos
        rot[i] = _quat_to_mat(slerp(quats[k], quats[k + 1], s))
        grip[i] = (1 - s) * a.gripper + s * b.gripper
    return pos, rot, grip


# ---------------------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class ScriptConfig:
    """Geometry of the scripted demonstrations (metres, radians, seconds).

    meet: where the right arm presents an object to the left one (transfers) or where peg and socket
    meet (insertion). pick_pitch: how steeply the right gripper comes down on a cube; it is kept while
    carrying so the cube stays axis-aligned for the left gripper, which approaches horizontally rolled
    by 90 degrees so its fingers close on the cube's top and bottom, between the right fingers.
    """

    meet: tuple[float, float, float] = (0.0, 0.5, 0.25)
    pick_pitch: float = np.deg2rad(60.0)
    pregrasp_height: float = 0.10
    grasp_height: float = 0.008  # grasp site above the cube centre: keeps fingertips off the table
    left_depth: float = 0.01  # how far short of the cube centre the left grasp site stops
    # Insertion: the peg (2 cm tall) and the socket (4.4 cm) are taken nearly from above so the
    # fingertips clear the table; grasp heights put the site that far above each object's centre.
    peg_pitch: float = np.deg2rad(80.0)
    socket_pitch: float = np.deg2rad(70.0)
    peg_grasp_height: float = 0.02
    socket_grasp_height: float = 0.012
    socket_meet: tuple[float, float, float] = (-0.08, 0.5, 0.25)
    insert_depth: float = 0.095  # peg centre ends this far (+x) from the socket centre (touching the pin)
    ik: IKConfig = field(default_factory=IKConfig)


class ScriptedPolicy:
    """Plans a whole episode at reset from privileged object poses; `plan(env)` -> (T, 14) commands."""

    def __init__(self, task: str, config: ScriptConfig = ScriptConfig()) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown sim task {task!r}; choose one of {list(TASKS)}")
        self.task, self.config = task, config
        self.max_ik_residual = 0.0

    def waypoints(self, env: BimanualSim) -> dict[str, list[Waypoint]]:
        """Per-arm waypoints for the episode that `env` was just reset to."""
        if self.task in ("transfer_cube", "transfer_color"):
            body = "box" if self.task == "transfer_cube" else COLOR_BODIES[env.target or "red"]
            return self._transfer(env, env.body_pose(body)[0])
        return self._insertion(env)

    def plan(self, env: BimanualSim, num_steps: int | None = None) -> np.ndarray:
        """Joint commands (T, 14) for the episode `env` was just reset to (call right after reset)."""
        if env.config.task != self.task:
            raise ValueError(f"policy is for {self.task!r} but the sim runs {env.config.task!r}")
        T = env.episode_steps if num_steps is None else int(num_steps)
        if T < 1:
            raise ValueError(f"num_steps must be >= 1, got {T}")
        wps = self.waypoints(env)
        state = env.state()
        out = np.empty((T, NUM_JOINTS))
        self.max_ik_residual = 0.0
        for arm, side in enumerate(SIDES):
            ik = ArmIK(env.model, side, self.config.ik)
            pos, rot, grip = interpolate_waypoints(wps[side], T, env.dt)
            q = state[arm * 7: arm * 7 + 6].copy()
            for i in range(T):
                q, res = ik.solve(pos[i], rot[i], q)
                self.max_ik_residual = max(self.max_ik_residual, res)
                out[i, arm * 7: arm * 7 + 6] = q
            out[:, arm * 7 + 6] = grip
        return out

    # ------------------------------------------------------------------ task scripts
    def _home(self, env: BimanualSim, side: str) -> tuple[np.ndarray, np.ndarray, float]:
        arm = SIDES.index(side)
        state = env.state()
        pos, rot = ArmIK(env.model, side).forward(state[arm * 7: arm * 7 + 6])
        return pos, rot, float(state[arm * 7 + 6])

    def _transfer(self, env: BimanualSim, cube: np.ndarray) -> dict[str, list[Waypoint]]:
        c = self.config
        meet = np.asarray(c.meet)
        up = np.array([0.0, 0.0, 1.0])
        ex = np.array([1.0, 0.0, 0.0])
        r_pick = gripper_rotation("right", c.pick_pitch)
        l_take = gripper_rotation("left", 0.0, roll=np.pi / 2)
        grasp = cube + up * c.grasp_height
        rp, rr, rg = self._home(env, "right")
        lp, lr, lg = self._home(env, "left")
        # Timing: some arm moves at every instant until the cube is handed over. A stretch where both arms
        # stand still while the next move depends only on the clock cannot be learned from what the policy
        # sees (images and joints look the same all through it); the left arm starts its approach the
        # moment the right arm arrives at the meeting point, and the right lets go once the left has closed.
        right = [
            Waypoint(0.0, rp, rr, rg),
            Waypoint(1.2, grasp + up * c.pregrasp_height, r_pick, 1.0),   # above the cube, open
            Waypoint(2.0, grasp, r_pick, 1.0),                           # down around it
            Waypoint(2.5, grasp, r_pick, 0.0),                           # close
            Waypoint(2.8, grasp, r_pick, 0.0),                           # settle the grasp
            Waypoint(4.0, meet, r_pick, 0.0),                            # carry to the meeting point
            Waypoint(4.9, meet, r_pick, 0.0),                            # hold while the left comes in
            Waypoint(5.3, meet, r_pick, 1.0),                            # let go
            Waypoint(6.1, meet + ex * 0.10 + up * 0.05, r_pick, 1.0),    # back off
        ]
        take = meet - ex * c.left_depth
        left = [
            Waypoint(0.0, lp, lr, lg),
            Waypoint(2.5, take - ex * 0.12, l_take, 1.0),                # stand by, open
            Waypoint(4.0, take - ex * 0.12, l_take, 1.0),
            Waypoint(4.6, take, l_take, 1.0),                            # slide over the cube
            Waypoint(4.9, take, l_take, 0.0),                            # close on top/bottom faces
            Waypoint(5.4, take, l_take, 0.0),                            # right lets go meanwhile
            Waypoint(6.4, take - ex * 0.10 + up * 0.03, l_take, 0.0),    # carry it away
        ]
        return {"left": left, "right": right}

    def _insertion(self, env: BimanualSim) -> dict[str, list[Waypoint]]:
        """Right arm takes the peg, left arm the socket, both at their centres; the objects keep
        their orientation (pitch is held), so aligning the centres aligns the axes. The peg waits
        in front of the socket mouth, then slides in along -x until it meets the pin."""
        c = self.config
        up = np.array([0.0, 0.0, 1.0])
        ex = np.array([1.0, 0.0, 0.0])
        peg = env.body_pose("peg")[0]
        socket = env.body_pose("socket")[0]
        r_rot = gripper_rotation("right", c.peg_pitch)
        l_rot = gripper_rotation("left", c.socket_pitch)
        peg_grasp = peg + up * c.peg_grasp_height
        socket_grasp = socket + up * c.socket_grasp_height
        s_meet = np.asarray(c.socket_meet)
        left_meet = s_meet + up * c.socket_grasp_height
        # Peg centre on the socket axis: site offset by the peg's own grasp height.
        right_ready = s_meet + ex * (c.insert_depth + 0.07) + up * c.peg_grasp_height
        right_in = s_meet + ex * c.insert_depth + up * c.peg_grasp_height
        rp, rr, rg = self._home(env, "right")
        lp, lr, lg = self._home(env, "left")
        right = [
            Waypoint(0.0, rp, rr, rg),
            Waypoint(1.2, peg_grasp + up * c.pregrasp_height, r_rot, 1.0),
            Waypoint(2.0, peg_grasp, r_rot, 1.0),
            Waypoint(2.5, peg_grasp, r_rot, 0.0),
            Waypoint(2.8, peg_grasp, r_rot, 0.0),
            Waypoint(4.2, right_ready, r_rot, 0.0),                      # no pause here: see _transfer
            Waypoint(6.0, right_in, r_rot, 0.0),
        ]
        left = [
            Waypoint(0.0, lp, lr, lg),
            Waypoint(1.2, socket_grasp + up * c.pregrasp_height, l_rot, 1.0),
            Waypoint(2.0, socket_grasp, l_rot, 1.0),
            Waypoint(2.5, socket_grasp, l_rot, 0.0),
            Waypoint(2.8, socket_grasp, l_rot, 0.0),
            Waypoint(4.2, left_meet, l_rot, 0.0),
        ]
        return {"left": left, "right": right}


def execution_noise(seed: int, steps: int, sigma: float, tau: float = NOISE_TAU_S,
                    dt: float = 1.0 / CONTROL_HZ) -> np.ndarray:
    """(steps, 14) smooth perturbations of the arm joints (radians; grippers untouched), starting at 0 (the robot
    starts at home): an Ornstein-Uhlenbeck process low-passed once more with the same correlation time `tau`
    (a plain OU process has white-noise increments, a 1 rad/s jitter at these sizes), scaled to stationary std
    `sigma`."""
    rng = np.random.default_rng([int(seed), 0x5EED])
    a = np.exp(-dt / tau)
    # Stationary variance of y_t = a y_(t-1) + (1 - a) x_t for an AR(1) x of variance 1 and coefficient a.
    gain = np.sqrt((1 - a) ** 2 * (1 + a * a) / (1 - a * a) ** 2)
    arms = [j for j in range(NUM_JOINTS) if j not in GRIPPER_INDICES]
    x = np.zeros(len(arms))
    y = np.zeros(len(arms))
    noise = np.zeros((steps, NUM_JOINTS))
    for t in range(1, steps):
        x = a * x + np.sqrt(1 - a * a) * rng.standard_normal(len(arms))
        y = a * y + (1 - a) * x
        noise[t, arms] = sigma * y / gain
    return noise


def motion_envelope(plan: np.ndarray, speed_ref: float = NOISE_SPEED_REF, dt: float = 1.0 / CONTROL_HZ) -> np.ndarray:
    """(T, 14) weights in [0, 1) for the execution noise: s / (s + speed_ref) with s each arm's planned joint speed
    (rad/s, norm over its 6 joints). Noise where the arm travels, almost none where it stands still to grasp or
    hand over: there precision decides success, and a wobble there mostly turns a demonstration into a failure."""
    vel = np.gradient(plan, dt, axis=0)
    env = np.zeros_like(plan)
    for arm in range(2):
        s = np.linalg.norm(vel[:, arm * 7: arm * 7 + 6], axis=1)
        env[:, arm * 7: arm * 7 + 6] = (s / (s + speed_ref))[:, None]
    return env


def run_scripted_episode(env: BimanualSim, policy: ScriptedPolicy, seed: int, *, render: bool = True,
                         target: str | None = None, num_steps: int | None = None, action_noise: float = 0.0) -> dict:
    """Reset `env` to `seed`, plan, execute. Returns arrays ready for a dataset episode:

    states (T, 14) observed before each command, actions (T, 14) the plan (the labels), executed (T, 14) what
    was commanded, images {cam: (T, H, W, 3)} (empty when render=False), instruction, success (goal reached at
    any tick, as ACT counts it), max_reward, and the final reward.

    action_noise > 0 (radians) executes the plan plus `execution_noise` while the labels stay the plan (DART,
    Laskey et al. 2017): the recorded states leave the planned path and the label says how to get back to it.
    Without it every demonstration lies exactly on a straight line from home to the cube, so a policy can read
    the target off the arm's own first motion (the joint state) instead of the camera; measured on the CPU recipe,
    it then made the same reach in every scene.
    """
    obs = env.reset(seed=seed, target=target, render=render)
    actions = policy.plan(env, num_steps)
    T = len(actions)
    executed = (actions + execution_noise(seed, T, action_noise) * motion_envelope(actions) if action_noise > 0
                else actions)
    states = np.empty((T, NUM_JOINTS))
    frames: dict[str, list[np.ndarray]] = {cam: [] for cam in (obs["images"] if render else {})}
    rewards = np.empty(T, dtype=int)
    for t in range(T):
        states[t] = obs["state"]
        for cam, img in obs["images"].items():
            frames[cam].append(img)
        obs = env.step(executed[t], render=render and t + 1 < T)
        rewards[t] = env.reward()
    return {
        "states": states, "actions": actions, "executed": executed,
        "images": {cam: np.stack(f) for cam, f in frames.items()},
        "instruction": env.instruction, "success": bool(rewards.max() == env.max_reward),
        "max_reward": int(rewards.max()), "final_reward": int(rewards[-1]), "rewards": rewards,
        "seed": seed,
    }
