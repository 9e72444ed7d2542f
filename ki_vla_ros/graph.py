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

"""The node graph of config/bimanual.yaml as data: which processes, with which arguments (no rclpy).

Why: `ki-vla-ros up` (pip machines without `ros2 launch`) and launch/bimanual.launch.py must start the
same graph from the same config. This module is what `up` runs and what the launch test compares the
launch file against.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ki_vla.paths import require
from ki_vla.procs import transport_env
from ki_vla_ros.config import read_parameter_file

CORE_NODES = ("camera_node", "policy_node", "executor_node")
# The processes that get Fast DDS's LARGE_DATA builtin transports (user data over SHM / TCP, UDP for discovery
# only): the ones that move camera images need it, and the executor must share it with them. Measured on one host
# (2026-12-02): with LARGE_DATA on the image nodes only, the executor on the default transports never received the
# sim's /clock or joint states (it sat "not ticking" and the realtime evaluation scored 0/50), and `ki-vla-ros status`
# on default transports saw none of the LARGE_DATA nodes. A robot PC must therefore use the same transport as the
# graph (README, multi-host).
IMAGE_NODES = ("sim_node", "camera_node", "policy_node", "executor_node")


@dataclass
class NodeProcess:
    """One process of the graph: a command line and the node name it runs."""

    name: str
    argv: list[str]
    optional_reason: str = ""   # non-empty when the process is started only if available

    def describe(self) -> str:
        return " ".join(self.argv)


@dataclass
class GraphPlan:
    processes: list[NodeProcess]
    notes: list[str] = field(default_factory=list)   # what is skipped and why (printed by `up`)
    temp_files: list[Path] = field(default_factory=list)


def sim_available() -> bool:
    """True once the sim node module exists in this install (it is added to the graph only then)."""
    return importlib.util.find_spec("ki_vla_ros.sim_node") is not None


def robot_state_publisher_executable() -> str | None:
    """The robot_state_publisher binary of a system ROS 2 install, if any (it is not on PyPI)."""
    try:
        from ament_index_python.packages import get_package_prefix

        exe = (Path(get_package_prefix("robot_state_publisher")) / "lib" / "robot_state_publisher"
               / "robot_state_publisher")
        return str(exe) if exe.exists() else None
    except Exception:  # no ament index (pip install) or package not installed
        return shutil.which("robot_state_publisher")


def ros_args(params_file: str | Path, node_name: str, overrides: dict[str, object]) -> list[str]:
    args = ["--ros-args", "-r", f"__node:={node_name}", "--params-file", str(params_file)]
    for k, v in overrides.items():
        value = str(v).lower() if isinstance(v, bool) else str(v)
        args += ["-p", f"{k}:={value}"]
    return args


def build_plan(config: str | Path, model: str | None = None, device: str | None = None, sim: bool = False,
               use_sim_time: bool = False, python: str = sys.executable) -> GraphPlan:
    """The processes for the graph of `config`; model/device override the policy node's parameters."""
    config_path = require(str(config))
    params = read_parameter_file(config_path)
    missing = [n for n in CORE_NODES if n not in params]
    if missing:
        raise ValueError(f"{config_path} has no section for {missing}")
    plan = GraphPlan(processes=[])
    with_sim = sim and sim_available()
    if with_sim and not use_sim_time:
        # The sim stamps frames and joint states with its own clock and publishes /clock: nodes that
        # compare stamps with their clock (age limits, latency compensation) must follow it.
        use_sim_time = True
        plan.notes.append("--sim: the nodes use the sim's /clock (use_sim_time=true)")
    common = {"use_sim_time": use_sim_time}
    for name in CORE_NODES:
        overrides: dict[str, object] = dict(common)
        if name == "policy_node":
            if model:
                overrides["model"] = str(require(model))
            if device:
                overrides["device"] = device
        plan.processes.append(NodeProcess(name, [python, "-m", f"ki_vla_ros.{name}"]
                                          + ros_args(config_path, name, overrides)))
    if sim:
        if with_sim:
            plan.processes.insert(0, NodeProcess("sim_node", [python, "-m", "ki_vla_ros.sim_node"]
                                                 + ros_args(config_path, "sim_node", {})))
        else:
            plan.notes.append("--sim requested but the sim is unavailable (ki_vla_ros.sim_node is not installed): "
                              "starting without it")
    rsp = robot_state_publisher_executable()
    rsp_params = params.get("robot_state_publisher", {})
    if rsp is None:
        plan.notes.append("robot_state_publisher is not installed (a system ROS 2 package): arm TF frames will not "
                          "be published; the executor still reads its limits from the URDF")
    else:
        urdf = require(str(rsp_params.get("urdf_path", "urdf/aloha_vx300s.urdf"))).read_text()
        fd, tmp = tempfile.mkstemp(prefix="ki_vla_rsp_", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump({"robot_state_publisher": {"ros__parameters": {
                "robot_description": urdf, "use_sim_time": use_sim_time,
                "publish_frequency": float(rsp_params.get("publish_frequency", 20.0))}}}, f)
        plan.temp_files.append(Path(tmp))
        plan.processes.append(NodeProcess("robot_state_publisher", [rsp, "--ros-args", "--params-file", tmp]))
    return plan


def graph_env(name: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for process `name` of the graph: LARGE_DATA where images flow (ARCHITECTURE.md: the default
    transport delays small messages to ~70 ms and drops some while 640x480 frames flow), unless the user chose a
    transport, which then holds for every process."""
    return transport_env(name in IMAGE_NODES, os.environ if base is None else base)
