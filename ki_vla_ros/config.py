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

"""Node configurations: dataclasses whose fields are the nodes' ROS parameters.

Why one definition: `config/bimanual.yaml` is a standard ROS 2 parameter file (`<node>: ros__parameters:`
sections plus a `/**` section shared by all nodes), so `ros2 launch`, `--params-file` and
`ki-vla-ros up` all read the same file. Each node declares one ROS parameter per dataclass field (the
default is the dataclass default), so every topic name and threshold is a parameter, and the same
dataclass can be loaded from the YAML without ROS (tests, the CLI, offline tools). No rclpy import here.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar


from ki_vla.configs import build, load_yaml
from ki_vla.control.safety import path_tolerances
from ki_vla.joints import (CAMERA_NAMES, CONTROL_HZ, JOINT_NAMES, LEFT_JOINTS, NUM_JOINTS, RIGHT_JOINTS,
                           POSITION_TOPICS, TRAJECTORY_TOPICS, RobotLayout)

DEFAULT_CONFIG = "config/bimanual.yaml"

T = TypeVar("T")


def between(lo: float, hi: float) -> dict[str, Any]:
    """A field's allowed range: declared in the ROS parameter's descriptor (`ros2 param describe` shows it and
    `ros2 param set` outside it fails) and checked when the config is read, from ROS or from YAML alike."""
    return {"range": (lo, hi)}


@dataclass
class CameraNodeConfig:
    """camera_node: raw driver frames -> RGB frames at the model's size."""

    camera_names: list[str] = field(default_factory=lambda: list(CAMERA_NAMES))
    input_topic: str = "{name}/image_raw"       # "{name}" is replaced by each camera name
    transport: str = "raw"                       # "raw" (sensor_msgs/Image) or "compressed" (<input_topic>/compressed)
    output_topic: str = "ki_vla/camera/{name}"
    image_size: int = field(default=224, metadata=between(8, 4096))                        # square side the model wants
    resize_mode: str = "pad"                     # crop | pad | stretch (ki_vla.data.images.resize_for_model)
    use_cv_bridge: bool = True                   # use ROS cv_bridge for raw frames when it is installed
    diagnostics_period: float = field(default=1.0, metadata=between(0.01, 60.0))


@dataclass
class PolicyNodeConfig:
    """policy_node: observations -> action chunks."""

    model: str = "config/model/tiny.yaml"        # checkpoint folder, or model YAML (random init, warns)
    device: str = "auto"                         # auto = cuda when available, else cpu
    engine: str = "auto"                         # auto (engine for expert variants, CUDA graphs on GPU) | on | off
    engine_fuse: str = "auto"                    # auto (fused norms/activations via torch.compile on GPU) | on | off
    # the engine's prompt budget (0 = the model's max_text_tokens)
    engine_text_tokens: int = field(default=0, metadata=between(0, 100000))
    camera_topic: str = "ki_vla/camera/{name}"  # camera names come from the model's config
    joint_states_topic: str = "joint_states"
    # The robot's joint names in policy order, "namespace/joint" for per-arm stacks: the executor's (RobotLayout).
    joint_names: list[str] = field(default_factory=lambda: list(JOINT_NAMES))
    instruction_topic: str = "instruction"
    chunk_topic: str = "ki_vla/action_chunk"
    # s; older frames make the observation stale
    max_image_age: float = field(default=0.25, metadata=between(0.0, 60.0))
    max_state_age: float = field(default=0.1, metadata=between(0.0, 60.0))                   # s
    # s; inputs stamped further ahead of our clock are refused (skew)
    max_future_stamp: float = field(default=0.05, metadata=between(0.0, 60.0))
    max_instruction_chars: int = field(default=512, metadata=between(1, 100000))
    instruction_latched: bool = True             # also subscribe transient-local (gets a latched publisher's
    #                                              last value; volatile publishers then log a QoS notice)
    default_instruction: str = ""                # used until one arrives on the topic ("" = wait for one)
    # s between inference starts; 0 = as fast as fresh data allows
    min_inference_period: float = field(default=0.0, metadata=between(0.0, 60.0))
    autostart: bool = True                       # configure + activate on start (no lifecycle manager needed)
    # CPU threads for torch (0 = torch's default)
    torch_threads: int = field(default=0, metadata=between(0, 1024))
    joint_scale: list[float] = field(default_factory=lambda: [1.0] * NUM_JOINTS)
    joint_offset: list[float] = field(default_factory=lambda: [0.0] * NUM_JOINTS)
    diagnostics_period: float = field(default=1.0, metadata=between(0.01, 60.0))
    # Real-time chunking (ki_vla.infer.rtc; README "Real-time chunking"): > 0 guides every chunk toward the
    # executor's published plan with this guidance clip (the paper's code 5, LeRobot 10); 0 = off. Pair it with the
    # executor's merge_strategy rtc. The delay is the most control periods any of the last rtc_delay_window
    # inferences took; before the next inference the node waits up to rtc_plan_timeout s for the plan that includes
    # the chunk it just published (else it guides toward the newest plan it has).
    rtc_beta: float = field(default=0.0, metadata=between(0.0, 1000.0))
    rtc_method: str = "guided"                   # guided (the paper's, one backward per step) | inpaint (no gradients)
    #                                              | prefix (models trained with rtc_max_delay)
    rtc_schedule: str = "exp"                    # prefix weights over the overlap: exp | linear
    rtc_delay_window: int = field(default=8, metadata=between(1, 1000))
    rtc_plan_timeout: float = field(default=0.05, metadata=between(0.0, 1.0))
    plan_topic: str = "ki_vla/executor_plan"
    # scale of the flow noise chunks are sampled from, in [0, 1] (PolicyConfig.noise_scale); < 0: the checkpoint's
    noise_scale: float = field(default=-1.0, metadata=between(-1.0, 1.0))
    # ms added to every inference (evaluation of latency: ki-vla eval-sim --inject-latency-ms); never on a robot
    inject_latency_ms: float = field(default=0.0, metadata=between(0.0, 10000.0))


# How the executor commands each arm, and so which ros2_control controller the robot runs (README, "Commanding the
# arms"): "trajectory" = JointTrajectoryController (trajectory_msgs/JointTrajectory, joint names, look-ahead points);
# "position" = a streaming position controller (forward_command_controller's position_controllers/
# JointGroupPositionController: std_msgs/Float64MultiArray, one value per joint in the controller's joint order).
COMMAND_INTERFACES = ("trajectory", "position")


def check_command_interface(interface: str, topics: Sequence[str]) -> None:
    """`ValueError` for an unknown interface or a topic left at the other interface's name (a JTC topic in
    position mode would be a silent no-op on the robot: nobody listens there with that type)."""
    if interface not in COMMAND_INTERFACES:
        raise ValueError(f"command_interface must be one of {list(COMMAND_INTERFACES)}, got {interface!r}")
    other = "joint_trajectory" if interface == "position" else "commands"
    wrong = [t for t in topics if t.rstrip("/").endswith(other)]
    if wrong:
        hint = (f"the position controllers' topics, e.g. {POSITION_TOPICS[0]}" if interface == "position"
                else f"the JointTrajectoryControllers' topics, e.g. {TRAJECTORY_TOPICS[0]}")
        raise ValueError(f"command_interface {interface!r} but command_topics {wrong}: set command_topics to {hint}")


@dataclass
class RobotInterfaceConfig:
    """The robot side shared by the executor and the sim that stands in for the robot (ki_vla.joints.RobotLayout):
    joint names as /joint_states and the controllers call them (policy order; "namespace/joint" for a per-arm
    ros2_control stack), one command topic per controller with its joints, and the controllers' kind."""

    joint_states_topic: str = "joint_states"
    joint_names: list[str] = field(default_factory=lambda: list(JOINT_NAMES))
    command_topics: list[str] = field(default_factory=lambda: list(TRAJECTORY_TOPICS))
    command_joints: list[str] = field(default_factory=lambda: [",".join(LEFT_JOINTS), ",".join(RIGHT_JOINTS)])
    command_interface: str = "trajectory"        # trajectory | position (COMMAND_INTERFACES)
    # robot units = joint_scale * policy units + joint_offset per joint (ki_vla.control.safety.JointMapping); the sim
    # applies it too, so it speaks the robot's units like the robot it stands in for
    joint_scale: list[float] = field(default_factory=lambda: [1.0] * NUM_JOINTS)
    joint_offset: list[float] = field(default_factory=lambda: [0.0] * NUM_JOINTS)

    def layout(self) -> RobotLayout:
        """The validated layout, or ValueError with the reason."""
        check_command_interface(self.command_interface, self.command_topics)
        return RobotLayout.from_parameters(self.joint_names, self.command_topics, self.command_joints)


@dataclass
class ExecutorNodeConfig(RobotInterfaceConfig):
    """executor_node: chunks -> one command per controller at the control rate."""

    chunk_topic: str = "ki_vla/action_chunk"
    urdf_path: str = "urdf/aloha_vx300s.urdf"
    # The URDF joint whose limits (robot units) bound each policy joint, policy order; empty = the policy's names.
    # A gripper commanded in finger metres reads the finger joint's limits (config/vx300s.yaml).
    urdf_joints: list[str] = field(default_factory=list)
    control_hz: float = field(default=CONTROL_HZ, metadata=between(1.0, 1000.0))
    merge_strategy: str = "latest"               # latest | temporal_ensembling | rtc (ki_vla.control.chunking.MERGERS)
    # What the executor has committed to, published at every accepted chunk (and empty when it holds): the policy's
    # real-time chunking guides its next chunk toward it (policy_node rtc_beta). "" = not published.
    plan_topic: str = "ki_vla/executor_plan"
    ensembling_m: float = field(default=0.01, metadata=between(0.0, 10.0))
    max_chunks: int = field(default=64, metadata=between(1, 1000))
    # s after the newest chunk's last point -> input timed out (chunks are followed to their end, then the command held)
    chunk_timeout: float = field(default=0.5, metadata=between(0.0, 60.0))
    # s without /joint_states -> stop advancing, hold the last command
    state_timeout: float = field(default=0.1, metadata=between(0.0, 10.0))
    # Per joint (JOINT_NAMES order), JointTrajectoryController semantics, 0 = unchecked: the measured position
    # farther than this from the command re-anchors the command there and holds (ki_vla.control.chunking).
    path_tolerance: list[float] = field(default_factory=lambda: path_tolerances(JOINT_NAMES).tolist())
    autostart: bool = True                       # configure + activate on start (active = may command the robot)
    # rad: a /joint_states sample this far from the last is doubted...
    state_jump_tolerance: float = field(default=0.2, metadata=between(0.0, 10.0))
    # ...until this many consecutive samples agree (40 ms late at 50 Hz)
    state_confirm: int = field(default=3, metadata=between(1, 100))
    # trajectory points per command (1 = next tick only)
    lookahead_points: int = field(default=1, metadata=between(1, 100))
    lookahead_velocities: bool = True            # with >= 2 points: velocities too (JTC's cubic interpolation)
    # fraction of the URDF velocity limits allowed
    velocity_scale: float = field(default=1.0, metadata=between(0.0, 1.0))
    max_points: int = field(default=1000, metadata=between(1, 100000))
    jump_velocity_factor: float = field(default=3.0, metadata=between(1.0, 1e9))
    max_start_deviation: float = field(default=0.5, metadata=between(0.0, 1e6))
    limit_tolerance: float = field(default=0.2, metadata=between(0.0, 1e6))
    # joints named *gripper (ki_vla.control.safety.ChunkCheck)
    gripper_limit_tolerance: float = field(default=1.0, metadata=between(0.0, 1e6))
    check_gripper_motion: bool = False           # jump / start-deviation checks on grippers too
    hold_before_first_chunk: bool = True         # command the measured position until the first chunk
    # >0: SCHED_FIFO priority for the control thread (needs CAP_SYS_NICE / rtprio limits; falls back to nice -10)
    realtime_priority: int = field(default=0, metadata=between(0, 99))
    diagnostics_period: float = field(default=1.0, metadata=between(0.01, 60.0))


SIM_MODES = ("realtime", "lockstep")


@dataclass
class SimNodeConfig(RobotInterfaceConfig):
    """sim_node parameters (every name is one); the robot interface it models is the executor's."""

    task: str = "transfer_cube"                  # transfer_cube | insertion | transfer_color
    seed: int = 0                                # first episode's seed
    target: str = ""                             # transfer_color: "red" | "blue" | "" (drawn per seed)
    mode: str = "realtime"                       # realtime | lockstep
    lockstep_on_command: bool = True             # lockstep: tick when both arms were commanded
    control_hz: float = field(default=CONTROL_HZ, metadata=between(1.0, 1000.0))
    camera_names: list[str] = field(default_factory=lambda: list(CAMERA_NAMES))
    image_height: int = field(default=240, metadata=between(8, 4096))
    image_width: int = field(default=320, metadata=between(8, 4096))
    # must divide control_hz; 0 = no cameras published
    camera_hz: float = field(default=25.0, metadata=between(0.0, 1000.0))
    camera_topic: str = "{name}/image_raw"
    camera_frame_id: str = "{name}_optical_frame"
    step_topic: str = "sim/step"
    reset_topic: str = "sim/reset"
    status_topic: str = "sim/status"
    instruction_topic: str = "sim/instruction"  # "" = do not publish; "/instruction" feeds the policy directly
    publish_clock: bool = True
    clock_topic: str = "/clock"
    # lockstep: re-send the last observation while idle (s, 0 = off)
    idle_republish_period: float = field(default=0.5, metadata=between(0.0, 60.0))
    # s after a reset: hold home, ignore commands (ki_vla.sim.robot)
    reset_settle: float = field(default=0.1, metadata=between(0.0, 10.0))
    # JointTrajectoryControllers start new trajectories from their last setpoint ("command": JTC with
    # interpolate_from_desired_state: true) or from the measured position ("measured": JTC's default; ki_vla.sim.robot)
    jtc_origin: str = "command"
    diagnostics_period: float = field(default=1.0, metadata=between(0.01, 60.0))

    def validate(self) -> None:
        from ki_vla.sim.scenes import TASKS  # imported here: MuJoCo is only needed where the sim runs

        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        if self.mode not in SIM_MODES:
            raise ValueError(f"mode must be one of {list(SIM_MODES)}, got {self.mode!r}")
        if self.target not in ("", "red", "blue"):
            raise ValueError(f"target must be '', 'red' or 'blue', got {self.target!r}")
        if self.target and self.task != "transfer_color":
            raise ValueError("target only applies to task transfer_color")
        self.layout()
        if self.camera_hz < 0 or (self.camera_hz > 0 and abs(self.control_hz / self.camera_hz
                                                             - round(self.control_hz / self.camera_hz)) > 1e-6):
            raise ValueError(f"camera_hz ({self.camera_hz}) must divide control_hz ({self.control_hz}) or be 0")

    @property
    def camera_every(self) -> int:
        return max(1, int(round(self.control_hz / self.camera_hz))) if self.camera_hz > 0 else 0


NODE_CONFIGS: dict[str, type] = {
    "camera_node": CameraNodeConfig,
    "policy_node": PolicyNodeConfig,
    "executor_node": ExecutorNodeConfig,
    "sim_node": SimNodeConfig,
}


def read_parameter_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Node name -> parameters, from a ROS 2 parameter YAML (`/**` entries merged under each node's own)."""
    data = load_yaml(Path(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of node names")
    shared = (data.get("/**") or {}).get("ros__parameters", {}) or {}
    out: dict[str, dict[str, Any]] = {}
    for key, section in data.items():
        if key == "/**":
            continue
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise ValueError(f"{path}: section {key!r} has no ros__parameters")
        out[key.lstrip("/")] = {**shared, **(section["ros__parameters"] or {})}
    out.setdefault("/**", dict(shared))
    return out


def load_node_config(cls: type[T], path: str | Path, node_name: str) -> T:
    """The config of `node_name` from a parameter file (shared `/**` values apply when the field exists)."""
    params = read_parameter_file(path)
    shared = params.get("/**", {})
    own = params.get(node_name, shared)
    names = {f.name for f in dataclasses.fields(cls)}
    # Shared keys meant for other nodes are skipped; a node's own unknown keys are errors.
    return build(cls, {k: v for k, v in own.items() if k in names or k not in shared}, f"{node_name} parameters")
