"""Node configurations: dataclasses whose fields are the nodes' ROS parameters.

Why one definition: `config/bimanual.yaml` is a standard ROS 2 parameter file (`<node>: ros__parameters:`
sections plus a `/**` section shared by all nodes), so `ros2 launch`, `--params-file` and
`ki-vla-ros up` all read the same file. Each node declares one ROS parameter per dataclass field (the
default is the dataclass default), so every topic name and threshold is a parameter, and the same
dataclass can be loaded from the YAML without ROS (tests, the CLI, offline tools). No rclpy import here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ki_vla.joints import CONTROL_HZ, NUM_JOINTS

PACKAGE = "ki_vla_ros"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "config/bimanual.yaml"

T = TypeVar("T")


@dataclass
class CameraNodeConfig:
    """camera_node: raw driver frames -> RGB frames at the model's size."""

    camera_names: list[str] = field(default_factory=lambda: ["cam_high", "cam_left_wrist", "cam_right_wrist"])
    input_topic: str = "/{name}/image_raw"       # "{name}" is replaced by each camera name
    transport: str = "raw"                       # "raw" (sensor_msgs/Image) or "compressed" (<input_topic>/compressed)
    output_topic: str = "/ki_vla/camera/{name}"
    image_size: int = 224                        # square side the model wants
    resize_mode: str = "pad"                     # crop | pad | stretch (ki_vla.data.images.resize_for_model)
    use_cv_bridge: bool = True                   # use ROS cv_bridge for raw frames when it is installed
    diagnostics_period: float = 1.0


@dataclass
class PolicyNodeConfig:
    """policy_node: observations -> action chunks."""

    model: str = "config/model/tiny.yaml"        # checkpoint folder, or model YAML (random init, warns)
    device: str = "auto"                         # auto = cuda when available, else cpu
    camera_topic: str = "/ki_vla/camera/{name}"  # camera names come from the model's config
    joint_states_topic: str = "/joint_states"
    instruction_topic: str = "/instruction"
    chunk_topic: str = "/ki_vla/action_chunk"
    max_image_age: float = 0.25                  # s; older frames make the observation stale
    max_state_age: float = 0.1                   # s
    max_instruction_chars: int = 512
    instruction_latched: bool = True             # also subscribe transient-local (gets a latched publisher's
                                                 # last value; volatile publishers then log a QoS notice)
    default_instruction: str = ""                # used until one arrives on the topic ("" = wait for one)
    min_inference_period: float = 0.0            # s between inference starts; 0 = as fast as fresh data allows
    autostart: bool = True                       # configure + activate on start (no lifecycle manager needed)
    torch_threads: int = 0                       # CPU threads for torch (0 = torch's default)
    joint_scale: list[float] = field(default_factory=lambda: [1.0] * NUM_JOINTS)
    joint_offset: list[float] = field(default_factory=lambda: [0.0] * NUM_JOINTS)
    diagnostics_period: float = 1.0


@dataclass
class ExecutorNodeConfig:
    """executor_node: chunks -> per-arm JointTrajectory commands at the control rate."""

    chunk_topic: str = "/ki_vla/action_chunk"
    joint_states_topic: str = "/joint_states"
    left_command_topic: str = "/left_arm_controller/joint_trajectory"
    right_command_topic: str = "/right_arm_controller/joint_trajectory"
    urdf_path: str = "urdf/aloha_vx300s.urdf"
    control_hz: float = CONTROL_HZ
    merge_strategy: str = "temporal_ensembling"  # temporal_ensembling | latest (ki_vla.infer.chunking.MERGERS)
    ensembling_m: float = 0.01
    max_chunks: int = 64
    chunk_timeout: float = 0.5                   # s without a fresh chunk -> hold the last command
    lookahead_points: int = 1                    # trajectory points per command (1 = next tick only)
    velocity_scale: float = 1.0                  # fraction of the URDF velocity limits allowed
    max_points: int = 1000
    jump_velocity_factor: float = 3.0
    max_start_deviation: float = 0.5
    limit_tolerance: float = 0.2
    hold_before_first_chunk: bool = True         # command the measured position until the first chunk
    realtime_priority: int = 0                   # >0: SCHED_FIFO priority for the control thread (needs
                                                 # CAP_SYS_NICE / rtprio limits; falls back to nice -10)
    joint_scale: list[float] = field(default_factory=lambda: [1.0] * NUM_JOINTS)
    joint_offset: list[float] = field(default_factory=lambda: [0.0] * NUM_JOINTS)
    diagnostics_period: float = 1.0


NODE_CONFIGS: dict[str, type] = {
    "camera_node": CameraNodeConfig,
    "policy_node": PolicyNodeConfig,
    "executor_node": ExecutorNodeConfig,
}


def read_parameter_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """node name -> parameters, from a ROS 2 parameter YAML (`/**` entries merged under each node's own)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
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


def from_dict(cls: type[T], values: dict[str, Any], strict: bool = True) -> T:
    """Build config dataclass `cls` from a mapping; unknown keys raise when strict (typos must not pass)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown and strict:
        raise ValueError(f"unknown {cls.__name__} parameter(s) {unknown}")
    return cls(**{k: v for k, v in values.items() if k in names})


def load_node_config(cls: type[T], path: str | Path, node_name: str) -> T:
    """The config of `node_name` from a parameter file (shared `/**` values apply when the field exists)."""
    params = read_parameter_file(path)
    shared = params.get("/**", {})
    own = params.get(node_name, shared)
    names = {f.name for f in dataclasses.fields(cls)}
    # Shared keys meant for other nodes are skipped; a node's own unknown keys are errors.
    return from_dict(cls, {k: v for k, v in own.items() if k in names or k not in shared})


def resolve_path(path: str) -> Path:
    """Find a config/URDF/model path given relative to the cwd, the installed share dir, or the repo.

    Absolute paths are returned as they are. The share dir is where colcon installs data files; the repo
    root covers editable pip installs. Raises FileNotFoundError listing every place tried.
    """
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        return p
    tried = [Path.cwd() / p]
    share = package_share_dir()
    if share is not None:
        tried.append(share / p)
    tried.append(REPO_ROOT / p)
    for cand in tried:
        if cand.exists():
            return cand
    raise FileNotFoundError(f"{path} not found; tried {', '.join(str(c) for c in tried)}")


def package_share_dir() -> Path | None:
    """share/ki_vla_ros of an installed package (colcon, or the pip data_files prefix), if any."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # not installed through ament (pip editable install): the repo has the files
        return None
