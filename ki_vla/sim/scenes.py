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

"""Bimanual ALOHA (2x ViperX 300s) MuJoCo scenes behind the project's joint interface.

`BimanualSim` drives raw `mujoco` (no gym / dm_control wrapper) so that the sim, the datasets and the
ROS graph share one convention, the one in ARCHITECTURE.md:

* state and commands are 14-vectors ordered as `ki_vla.joints.JOINT_NAMES` (6 arm joints in radians
  then a gripper, left arm first);
* grippers are normalized, 0 closed .. 1 open. The model has two slide fingers per gripper; the
  mapping to finger travel (`FINGER_CLOSED` .. `FINGER_OPEN`, metres) lives here and nowhere else;
* one `step` is one control tick at `CONTROL_HZ` (50 Hz): the command becomes the targets of the
  scene's position actuators and physics advances by as many 2 ms substeps as fit in the tick;
* cameras are named `cam_high` (the asset's `top`), `cam_left_wrist` and `cam_right_wrist` (ours:
  gripper-mounted, wide angle, fingers in view, like ALOHA's; the asset's narrow 20-degree wrist views
  keep their names `left_wrist` / `right_wrist`); `cam_front` (the asset's `angle`) is there for videos.

Scenes come from gym-aloha's MJCF assets (transfer cube, insertion); `transfer_color` is ours: the
transfer-cube scene with a second, blue cube and an instruction naming the cube to hand over.

Rendering is the expensive part on CPU, so only the cameras asked for are rendered, one reusable
`mujoco.Renderer` serves them all, and shadows, reflections, the skybox and multisampling are off
(measured on llvmpipe: about 7x cheaper than the defaults for three 240x320 views). A renderer
belongs to the thread that made it; rendering from another thread makes a new one.

Episodes are seeded: `reset(seed)` samples object poses (and the target colour) from
`numpy.random.default_rng(seed)`; MuJoCo itself is deterministic, so the same seed and the same
commands give bit-identical trajectories.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Headless Linux (CI, servers, containers): MuJoCo's default GLFW backend needs a display, OSMesa is
# rarely installed, EGL works with Mesa's software rasterizer. The choice is read when the first
# renderer is made, so setting it here (unless the user chose) is early enough.
if sys.platform.startswith("linux") and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from ki_vla.joints import ARM_JOINTS, CAMERA_NAMES, CONTROL_HZ, JOINT_NAMES, NUM_JOINTS  # noqa: E402

TASKS = ("transfer_cube", "insertion", "transfer_color")
DEFAULT_CAMERAS = CAMERA_NAMES
DEFAULT_IMAGE_SIZE = (240, 320)

# Our camera name -> camera name in gym-aloha's scene.xml / arm includes.
# The wrist cameras are ours (see `_add_wrist_camera`); the asset's narrow ones stay under their names.
CAMERA_RENAMES = {"top": "cam_high", "angle": "cam_front"}
# Wrist camera mount in the gripper link frame (metres) and the point it looks at (between the
# fingertips), like ALOHA's gripper-mounted cameras: wide angle, fingers at the bottom of the image.
WRIST_CAM_POS = (0.04, 0.0, 0.075)
WRIST_CAM_TARGET = (0.2, 0.0, -0.03)
WRIST_CAM_FOVY = 75.0

# Finger slide travel (metres) that normalized gripper 0 (closed) and 1 (open) map to. These are the
# ALOHA puppet calibration values; the actuator's ctrlrange (0.021 .. 0.057) clips slightly inside them,
# so a "closed" command squeezes whatever is between the fingers with the actuator's full gain.
FINGER_CLOSED = 0.01844
FINGER_OPEN = 0.05800

# The arms' resting pose (ALOHA "sleep-ready" pose), 6 joints per arm, and its finger travel.
HOME_ARM_QPOS = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0)
HOME_FINGER = 0.02239

# Grasp point: between the finger pads, 0.125 m along the gripper link's x axis (the fingers span
# 0.064 .. 0.154 m). Scripted policies place this site on objects; it is added to the model here.
GRASP_SITE_OFFSET = (0.125, 0.0, 0.0)

TABLE_HEIGHT = 0.0
CUBE_HALF = 0.02


def _asset_dir() -> Path:
    """gym-aloha's MJCF assets (meshes and scene files); imported lazily so a missing package is a
    clear error at construction, not an import failure of the whole library."""
    try:
        import gym_aloha
    except ImportError as exc:  # pragma: no cover - environment problem, message says what to install
        raise RuntimeError("ki_vla.sim needs the `gym-aloha` package for its MuJoCo assets") from exc
    return Path(gym_aloha.__file__).resolve().parent / "assets"


def gripper_to_finger(g: float | np.ndarray) -> float | np.ndarray:
    """Normalized gripper (0 closed .. 1 open) -> finger slide position in metres."""
    return FINGER_CLOSED + np.asarray(g) * (FINGER_OPEN - FINGER_CLOSED)


def finger_to_gripper(x: float | np.ndarray) -> float | np.ndarray:
    """Finger slide position in metres -> normalized gripper (0 closed .. 1 open)."""
    return (np.asarray(x) - FINGER_CLOSED) / (FINGER_OPEN - FINGER_CLOSED)


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a sim instance except the episode seed.

    image_size is (height, width). control_hz must divide the physics rate (500 Hz) so that every
    control tick is a whole number of substeps.
    """

    task: str = "transfer_cube"
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    control_hz: float = CONTROL_HZ

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown sim task {self.task!r}; choose one of {list(TASKS)}")
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        if len(self.image_size) != 2 or min(self.image_size) < 8 or max(self.image_size) > 2048:
            raise ValueError(f"image_size must be (height, width) with 8 <= each <= 2048, got {self.image_size}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"duplicate camera names in {self.cameras}")
        if not self.control_hz > 0:
            raise ValueError(f"control_hz must be positive, got {self.control_hz}")


@dataclass
class ObjectSpec:
    """A free body of the scene whose pose is sampled at reset (x, y ranges on the table, metres)."""

    body: str
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    z: float


@dataclass
class TaskSpec:
    """What differs between tasks: the asset, the objects and their ranges, the episode length."""

    name: str
    xml: str
    objects: list[ObjectSpec]
    episode_steps: int
    max_reward: int = 4
    extra_build: Callable[[mujoco.MjSpec], None] | None = None
    min_object_distance: float = 0.0
    instructions: dict[str, str] = field(default_factory=dict)


def _add_blue_cube(spec: mujoco.MjSpec) -> None:
    """Second cube for `transfer_color`, with the same contact parameters as the asset's red cube."""
    red = spec.geom("red_box")
    body = spec.worldbody.add_body(name="blue_box_body", pos=[-0.1, 0.5, 0.05])
    body.add_freejoint(name="blue_box_joint")
    body.explicitinertial = True
    body.ipos = [0.0, 0.0, 0.0]  # must be set: it otherwise inherits the body position
    body.iquat = [1.0, 0.0, 0.0, 0.0]
    body.mass = 0.05
    body.inertia = [0.002, 0.002, 0.002]
    body.add_geom(name="blue_box", type=mujoco.mjtGeom.mjGEOM_BOX, size=[CUBE_HALF] * 3,
                  rgba=[0.1, 0.2, 1.0, 1.0], condim=red.condim, solimp=red.solimp, solref=red.solref,
                  friction=red.friction)
    spec.joint("blue_box_joint").frictionloss = spec.joint("red_box_joint").frictionloss


TASK_SPECS: dict[str, TaskSpec] = {
    # Ranges as in the ACT paper's sim tasks: the object starts on the right arm's half of the table.
    "transfer_cube": TaskSpec(
        "transfer_cube", "bimanual_viperx_transfer_cube.xml",
        [ObjectSpec("box", (0.0, 0.2), (0.4, 0.6), CUBE_HALF)], episode_steps=400,
        instructions={"": "transfer the cube from the right arm to the left arm"}),
    "insertion": TaskSpec(
        "insertion", "bimanual_viperx_insertion.xml",
        [ObjectSpec("peg", (0.1, 0.2), (0.4, 0.6), 0.01), ObjectSpec("socket", (-0.2, -0.1), (0.4, 0.6), 0.022)],
        episode_steps=400, instructions={"": "insert the peg into the socket"}),
    "transfer_color": TaskSpec(
        "transfer_color", "bimanual_viperx_transfer_cube.xml",
        [ObjectSpec("box", (0.0, 0.2), (0.4, 0.6), CUBE_HALF),
         ObjectSpec("blue_box_body", (0.0, 0.2), (0.4, 0.6), CUBE_HALF)],
        episode_steps=400, extra_build=_add_blue_cube, min_object_distance=0.09,
        instructions={"red": "transfer the red cube", "blue": "transfer the blue cube"}),
}
COLOR_BODIES = {"red": "box", "blue": "blue_box_body"}
# transfer_color: the cube the instruction does not name counts as moved beyond this (m, any axis).
WRONG_CUBE_MOVE_M = 0.02
COLOR_GEOMS = {"red": "red_box", "blue": "blue_box"}


def _add_wrist_camera(body: mujoco.MjsBody, name: str) -> None:
    """A fixed camera on the gripper link looking from WRIST_CAM_POS at WRIST_CAM_TARGET.

    MuJoCo cameras look along their -z axis with +y up in the image; the image's right is the gripper's
    -y so that, with the gripper upright, the view is not mirrored.
    """
    pos = np.asarray(WRIST_CAM_POS)
    look = np.asarray(WRIST_CAM_TARGET) - pos
    z = -look / np.linalg.norm(look)
    x = np.array([0.0, -1.0, 0.0])
    x -= z * (x @ z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    cam = body.add_camera(name=name, pos=list(pos), fovy=WRIST_CAM_FOVY)
    cam.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
    cam.alt.xyaxes = list(x) + list(y)


def build_model(task: str) -> mujoco.MjModel:
    """Compile the task's scene: gym-aloha's MJCF plus our edits (renamed cameras, grasp sites, the
    blue cube for `transfer_color`). Keyframes are dropped because reset sets the state itself."""
    if task not in TASK_SPECS:
        raise ValueError(f"unknown sim task {task!r}; choose one of {list(TASKS)}")
    ts = TASK_SPECS[task]
    spec = mujoco.MjSpec.from_file(str(_asset_dir() / ts.xml))
    for key in list(spec.keys):
        spec.delete(key)
    for cam in spec.cameras:
        if cam.name in CAMERA_RENAMES:
            cam.name = CAMERA_RENAMES[cam.name]
    for side in ("left", "right"):
        _add_wrist_camera(spec.body(f"vx300s_{side}/gripper_link"), f"cam_{side}_wrist")
        spec.body(f"vx300s_{side}/gripper_link").add_site(
            name=f"{side}_grasp", pos=list(GRASP_SITE_OFFSET), size=[0.005, 0.005, 0.005],
            rgba=[0, 1, 0, 0], group=4)
    # Off-screen multisampling is the largest fixed cost of a render on llvmpipe.
    spec.visual.quality.offsamples = 0
    # The asset's near plane (0.1 x model extent) clips the fingers out of a wrist camera's view.
    spec.visual.map.znear = 0.01
    if ts.extra_build is not None:
        ts.extra_build(spec)
    return spec.compile()


_LIVE_RENDERERS: "weakref.WeakSet[BimanualSim]" = weakref.WeakSet()
_ATEXIT_HOOKED = False


def _close_renderers() -> None:
    """Free GL contexts before interpreter teardown. mujoco.egl registers `eglTerminate` at exit when the
    first context is made; freeing a context after that raises noisy errors, so this hook is registered
    after the first renderer exists (atexit runs last-registered first)."""
    for sim in list(_LIVE_RENDERERS):
        sim.close()


class BimanualSim:
    """One bimanual scene; see the module docstring for the conventions.

    >>> env = BimanualSim("transfer_color", seed=0, image_size=(96, 128))
    >>> obs = env.reset()                   # {"state", "velocity", "images", "instruction", "time", "step"}
    >>> obs = env.step(obs["state"])        # hold still for one 50 Hz tick
    >>> env.reward(), env.success()
    """

    def __init__(self, task: str = "transfer_cube", seed: int = 0, *,
                 cameras: tuple[str, ...] | list[str] = DEFAULT_CAMERAS,
                 image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, control_hz: float = CONTROL_HZ) -> None:
        self.config = SimConfig(task=task, cameras=tuple(cameras), image_size=tuple(image_size),
                                control_hz=control_hz)
        self.task = TASK_SPECS[task]
        self.model = build_model(task)
        self.data = mujoco.MjData(self.model)
        self._seed_stream = np.random.default_rng(seed)
        self._first_seed: int | None = int(seed)

        m = self.model
        substeps = 1.0 / (self.config.control_hz * m.opt.timestep)
        if abs(substeps - round(substeps)) > 1e-6 or round(substeps) < 1:
            raise ValueError(f"control_hz={control_hz} does not divide the physics rate {1 / m.opt.timestep:g} Hz")
        self.substeps = int(round(substeps))

        self.camera_names = self.available_cameras()
        unknown = [c for c in self.config.cameras if c not in self.camera_names]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; this scene has {self.camera_names}")

        # Index maps between our 14-vector and the model's qpos / actuators.
        self._arm_qpos = np.zeros(12, dtype=int)
        self._arm_dof = np.zeros(12, dtype=int)
        self._arm_act = np.zeros(12, dtype=int)
        self._finger_qpos = np.zeros((2, 2), dtype=int)  # [arm, (left_finger, right_finger)]
        self._finger_dof = np.zeros((2, 2), dtype=int)
        self._finger_act = np.zeros((2, 2), dtype=int)
        act_of_joint = {int(m.actuator_trnid[a, 0]): a for a in range(m.nu)}
        for arm, side in enumerate(("left", "right")):
            for j, name in enumerate(ARM_JOINTS[:6]):
                jid = m.joint(f"vx300s_{side}/{name}").id
                k = arm * 6 + j
                self._arm_qpos[k], self._arm_dof[k] = m.jnt_qposadr[jid], m.jnt_dofadr[jid]
                self._arm_act[k] = act_of_joint[jid]
            for f, finger in enumerate(("left_finger", "right_finger")):
                jid = m.joint(f"vx300s_{side}/{finger}").id
                self._finger_qpos[arm, f], self._finger_dof[arm, f] = m.jnt_qposadr[jid], m.jnt_dofadr[jid]
                self._finger_act[arm, f] = act_of_joint[jid]
        self._obj_qpos = {o.body: m.jnt_qposadr[m.body(o.body).jntadr[0]] for o in self.task.objects}

        # Geom ids for contact-based rewards.
        gid = lambda n: m.geom(n).id  # noqa: E731
        self._fingers = {side: {gid(f"vx300s_{side}/10_left_gripper_finger"),
                                gid(f"vx300s_{side}/10_right_gripper_finger")} for side in ("left", "right")}
        self._table = gid("table")

        self._renderer: mujoco.Renderer | None = None
        self.instruction = ""
        self.target: str | None = None
        self._other_start: np.ndarray | None = None  # transfer_color: where the cube not named started
        self.step_count = 0
        self._render_thread: int | None = None
        self.reset(render=False)  # renderer (a GL context) is made lazily, on the thread that renders
        self._first_seed = int(seed)  # a first reset() without a seed still starts the constructor's episode

    # ------------------------------------------------------------------ properties / info
    @property
    def joint_names(self) -> tuple[str, ...]:
        return JOINT_NAMES

    @property
    def episode_steps(self) -> int:
        """Default episode length in control ticks (8 s at 50 Hz, as the ACT sim tasks)."""
        return self.task.episode_steps

    @property
    def time(self) -> float:
        """Simulated time in seconds since reset."""
        return float(self.data.time)

    @property
    def dt(self) -> float:
        """Seconds per control tick."""
        return self.substeps * float(self.model.opt.timestep)

    def available_cameras(self) -> tuple[str, ...]:
        return tuple(self.model.camera(i).name for i in range(self.model.ncam))

    def body_pose(self, body: str) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and rotation matrix (3, 3) of a body, e.g. an object to grasp."""
        b = self.data.body(body)
        return b.xpos.copy(), b.xmat.reshape(3, 3).copy()

    def object_positions(self) -> dict[str, np.ndarray]:
        """Privileged object positions (what scripted policies plan from)."""
        return {o.body: self.data.body(o.body).xpos.copy() for o in self.task.objects}

    # ------------------------------------------------------------------ state
    def state(self) -> np.ndarray:
        """Joint positions (14,), our order, grippers normalized (mean of the two fingers)."""
        q = self.data.qpos
        out = np.empty(NUM_JOINTS)
        for arm in range(2):
            out[arm * 7: arm * 7 + 6] = q[self._arm_qpos[arm * 6: arm * 6 + 6]]
            fingers = q[self._finger_qpos[arm]]
            out[arm * 7 + 6] = finger_to_gripper(0.5 * (fingers[0] - fingers[1]))
        return out

    def velocity(self) -> np.ndarray:
        """Joint velocities (14,), rad/s for arms, normalized units/s for grippers."""
        v = self.data.qvel
        out = np.empty(NUM_JOINTS)
        for arm in range(2):
            out[arm * 7: arm * 7 + 6] = v[self._arm_dof[arm * 6: arm * 6 + 6]]
            fingers = v[self._finger_dof[arm]]
            out[arm * 7 + 6] = 0.5 * (fingers[0] - fingers[1]) / (FINGER_OPEN - FINGER_CLOSED)
        return out

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None, target: str | None = None, render: bool = True) -> dict:
        """Start an episode: arms at the home pose, objects sampled from `seed`.

        seed=None takes the next seed of a stream started from the constructor's seed (the first reset
        uses the constructor's seed itself), so `BimanualSim(seed=s)` is reproducible end to end.
        target ("red" | "blue") fixes the cube named by `transfer_color`'s instruction; by default it
        is drawn from the seed.
        """
        if seed is None:
            seed = self._first_seed if self._first_seed is not None else int(self._seed_stream.integers(2**31))
        self._first_seed = None
        if target is not None and self.task.name != "transfer_color":
            raise ValueError(f"target is only meaningful for transfer_color, not {self.task.name}")
        if target is not None and target not in COLOR_BODIES:
            raise ValueError(f"target must be one of {sorted(COLOR_BODIES)}, got {target!r}")
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)

        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        home = np.asarray(HOME_ARM_QPOS)
        for arm in range(2):
            d.qpos[self._arm_qpos[arm * 6: arm * 6 + 6]] = home
            d.qpos[self._finger_qpos[arm]] = (HOME_FINGER, -HOME_FINGER)
        positions = self._sample_objects(rng)
        for obj, pos in zip(self.task.objects, positions):
            adr = self._obj_qpos[obj.body]
            d.qpos[adr: adr + 3] = pos
            d.qpos[adr + 3: adr + 7] = (1.0, 0.0, 0.0, 0.0)
        self.target = None
        if self.task.name == "transfer_color":
            self.target = target if target is not None else ("red", "blue")[int(rng.integers(2))]
        self.instruction = self.task.instructions[self.target or ""]
        # Hold the home pose: actuator targets equal the current joints.
        self._write_ctrl(self.state())
        mujoco.mj_forward(m, d)
        self._other_start = None if self.target is None else self.body_pose(self._other_body())[0]
        self.step_count = 0
        return self.observation(render=render)

    def _sample_objects(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Uniform positions in each object's range; rejection sampling keeps objects apart."""
        for _ in range(1000):
            pts = [np.array([rng.uniform(*o.x_range), rng.uniform(*o.y_range), o.z]) for o in self.task.objects]
            dmin = self.task.min_object_distance
            if all(np.linalg.norm(a[:2] - b[:2]) >= dmin for i, a in enumerate(pts) for b in pts[i + 1:]):
                return pts
        raise RuntimeError("could not place objects apart; ranges too small for min_object_distance")

    def _write_ctrl(self, command: np.ndarray) -> None:
        d = self.data
        for arm in range(2):
            d.ctrl[self._arm_act[arm * 6: arm * 6 + 6]] = command[arm * 7: arm * 7 + 6]
            finger = float(gripper_to_finger(np.clip(command[arm * 7 + 6], 0.0, 1.0)))
            d.ctrl[self._finger_act[arm]] = (finger, -finger)

    def step(self, command: np.ndarray | list[float], render: bool = True) -> dict:
        """Apply a 14-D joint position command and advance one control tick; returns the observation.

        `command` (substeps, 14) gives each physics substep its own target instead: a ros2_control controller
        updating faster than the commands arrive (SimRobot's JTC from the measured state). Arm joints are clipped by
        the actuators' ctrlrange (the joint limits); grippers are clipped to [0, 1]. render=False skips the cameras
        (the observation's "images" is then empty).
        """
        cmd = np.asarray(command, dtype=np.float64)
        if cmd.shape not in ((NUM_JOINTS,), (self.substeps, NUM_JOINTS)):
            raise ValueError(f"command must have shape ({NUM_JOINTS},) in JOINT_NAMES order, or ({self.substeps}, "
                             f"{NUM_JOINTS}) for one per substep, got {cmd.shape}")
        if not np.all(np.isfinite(cmd)):
            raise ValueError("command contains NaN or inf")
        if cmd.ndim == 1:
            self._write_ctrl(cmd)
            mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        else:
            for row in cmd:
                self._write_ctrl(row)
                mujoco.mj_step(self.model, self.data)
        self.step_count += 1
        return self.observation(render=render)

    def observation(self, render: bool = True) -> dict:
        """`state` (14,), `velocity` (14,), `images` {cam: uint8 (H, W, 3)}, `instruction`, `time`, `step`."""
        return {"state": self.state(), "velocity": self.velocity(),
                "images": self.render() if render else {}, "instruction": self.instruction,
                "time": self.time, "step": self.step_count}

    # ------------------------------------------------------------------ rewards
    def _contacts(self) -> set[tuple[int, int]]:
        """Unordered geom-id pairs in contact now."""
        n = self.data.ncon
        if n == 0:
            return set()
        g = self.data.contact.geom[:n]
        return {(int(min(a, b)), int(max(a, b))) for a, b in g}

    def _touch(self, contacts: set[tuple[int, int]], geoms_a: set[int], geoms_b: set[int]) -> bool:
        return any((min(a, b), max(a, b)) in contacts for a in geoms_a for b in geoms_b)

    def _transfer_stage(self, contacts: set[tuple[int, int]], obj: set[int]) -> int:
        """The ACT staging for handing a cube from the right gripper to the left one:
        1 right gripper touches it, 2 lifted by the right, 3 left touches, 4 held by left off the table."""
        right = self._touch(contacts, obj, self._fingers["right"])
        left = self._touch(contacts, obj, self._fingers["left"])
        table = self._touch(contacts, obj, {self._table})
        stage = 0
        if right:
            stage = 1
        if right and not table:
            stage = 2
        if left:
            stage = 3
        if left and not table:
            stage = 4
        return stage

    def reward(self) -> int:
        """Staged reward 0..4 (4 = success), from the current contacts as in the ACT sim tasks.

        transfer_color stages the named cube; its 4 also needs the other cube to be resting on the table
        and touched by no gripper (otherwise the reward is capped at 3).
        """
        c = self._contacts()
        m = self.model
        if self.task.name == "transfer_cube":
            return self._transfer_stage(c, {m.geom("red_box").id})
        if self.task.name == "transfer_color":
            assert self.target is not None
            other = "blue" if self.target == "red" else "red"
            stage = self._transfer_stage(c, {m.geom(COLOR_GEOMS[self.target]).id})
            o = {m.geom(COLOR_GEOMS[other]).id}
            other_ok = (self._touch(c, o, {self._table})
                        and not self._touch(c, o, self._fingers["left"] | self._fingers["right"]))
            return stage if other_ok else min(stage, 3)
        # insertion
        peg = {m.geom("red_peg").id}
        socket = {m.geom(f"socket-{i}").id for i in range(1, 5)}
        pin = {m.geom("pin").id}
        table = {self._table}
        left = self._touch(c, socket, self._fingers["left"])
        right = self._touch(c, peg, self._fingers["right"])
        off_table = not self._touch(c, peg, table) and not self._touch(c, socket, table)
        stage = 0
        if left and right:
            stage = 1
        if left and right and off_table:
            stage = 2
        if self._touch(c, peg, socket) and off_table:
            stage = 3
        if self._touch(c, peg, pin):
            stage = 4
        return stage

    @property
    def max_reward(self) -> int:
        return self.task.max_reward

    def success(self) -> bool:
        """True when the task's goal holds now (reward == max_reward)."""
        return self.reward() == self.task.max_reward

    def _other_body(self) -> str:
        return COLOR_BODIES["blue" if self.target == "red" else "red"]

    def wrong_cube_moved(self) -> bool | None:
        """transfer_color: has the cube the instruction does not name moved more than WRONG_CUBE_MOVE_M since the
        reset (the policy ignored the language)? None for the other tasks."""
        if self._other_start is None:
            return None
        moved = np.abs(self.body_pose(self._other_body())[0] - self._other_start)
        return bool(moved.max() > WRONG_CUBE_MOVE_M)

    # ------------------------------------------------------------------ rendering
    def render(self, cameras: tuple[str, ...] | list[str] | None = None) -> dict[str, np.ndarray]:
        """RGB uint8 (H, W, 3) images of the given cameras (default: the configured ones)."""
        cams = self.config.cameras if cameras is None else tuple(cameras)
        unknown = [c for c in cams if c not in self.camera_names]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; this scene has {self.camera_names}")
        if not cams:
            return {}
        if self._renderer is not None and self._render_thread != threading.get_ident():
            # A GL context is bound to the thread that made it (EGL_BAD_ACCESS elsewhere): start afresh.
            try:
                self._renderer.close()
            except Exception:  # noqa: BLE001 - the old context may not be releasable from here
                pass
            self._renderer = None
        if self._renderer is None:
            self._render_thread = threading.get_ident()
            h, w = self.config.image_size
            if h > self.model.vis.global_.offheight or w > self.model.vis.global_.offwidth:
                self.model.vis.global_.offheight = max(h, self.model.vis.global_.offheight)
                self.model.vis.global_.offwidth = max(w, self.model.vis.global_.offwidth)
            self._renderer = mujoco.Renderer(self.model, h, w)
            flags = self._renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
            _LIVE_RENDERERS.add(self)
            global _ATEXIT_HOOKED
            if not _ATEXIT_HOOKED:
                atexit.register(_close_renderers)
                _ATEXIT_HOOKED = True
        out = {}
        for cam in cams:
            self._renderer.update_scene(self.data, camera=cam)
            out[cam] = self._renderer.render().copy()
        return out

    def close(self) -> None:
        """Release the GL context (safe to call twice). Call it from the thread that rendered; from
        another thread the context cannot be made current, and it is only dropped."""
        if self._renderer is not None:
            renderer, self._renderer = self._renderer, None
            try:
                renderer.close()
            except Exception:  # noqa: BLE001 - e.g. EGL_BAD_ACCESS from a foreign thread, or at teardown
                pass

    @classmethod
    def from_config(cls, config: SimConfig, seed: int = 0) -> "BimanualSim":
        """Build from a SimConfig (e.g. one stored with an evaluation)."""
        return cls(config.task, seed, cameras=config.cameras, image_size=config.image_size,
                   control_hz=config.control_hz)

    def __enter__(self) -> "BimanualSim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
