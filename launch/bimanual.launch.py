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

"""Bimanual KI-VLA graph: camera_node, policy_node, executor_node, robot_state_publisher (+ sim_node).

    ros2 launch ki_vla_ros bimanual.launch.py [model:=PATH] [device:=cuda] [use_sim_time:=true] [sim:=true]
        [config:=/path/to/bimanual.yaml] [robot_state_publisher:=false]

robot_state_publisher:=false leaves the description to whoever owns the robot (bimanual_gazebo.launch.py, which
publishes the ros2_control one, or a robot's own bringup).

Thin on purpose: every parameter lives in config/bimanual.yaml (a ROS 2 parameter file), which
`ki-vla-ros up` reads too, so both start the same graph. Paths follow `up`'s one rule (ki_vla.paths): the
current directory first, then share/ki_vla_ros, then the source checkout. When a core node exits (a config error,
a crash), the whole launch shuts down, like `up`.
"""
import importlib.util
import os

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "ki_vla_ros"


def _transport(name: str) -> dict:
    """What `up` adds to node `name`'s environment: Fast DDS's LARGE_DATA builtin transports where camera images
    flow (ki_vla_ros.graph.IMAGE_NODES); a transport the user exported holds for every node."""
    from ki_vla_ros.graph import graph_env

    return {k: v for k, v in graph_env(name).items() if os.environ.get(k) != v}


def _path(p: str) -> str:
    from ki_vla.paths import require  # the same lookup as `ki-vla-ros up` (cwd, share, source checkout)

    return str(require(p))


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _nodes(context, *args, **kwargs):
    config = _path(LaunchConfiguration("config").perform(context))
    model = LaunchConfiguration("model").perform(context)
    device = LaunchConfiguration("device").perform(context)
    use_sim_time = _truthy(LaunchConfiguration("use_sim_time").perform(context))
    sim = _truthy(LaunchConfiguration("sim").perform(context))
    with_rsp = _truthy(LaunchConfiguration("robot_state_publisher").perform(context))
    sim_installed = importlib.util.find_spec(f"{PACKAGE}.sim_node") is not None
    # The sim publishes /clock and stamps everything with it: the other nodes must follow it.
    use_sim_time = use_sim_time or (sim and sim_installed)
    with open(config) as f:
        params = yaml.safe_load(f)
    rsp = params.get("robot_state_publisher", {}).get("ros__parameters", {})
    with open(_path(rsp.get("urdf_path", "urdf/aloha_vx300s.urdf"))) as f:
        robot_description = f.read()

    common = {"use_sim_time": use_sim_time}
    policy_overrides = dict(common)
    if model:
        policy_overrides["model"] = _path(model)
    if device:
        policy_overrides["device"] = device

    def core(name: str, overrides: dict) -> Node:
        return Node(package=PACKAGE, executable=name, name=name, output="screen", parameters=[config, overrides],
                    additional_env=_transport(name), on_exit=Shutdown(reason=f"{name} exited"))

    actions = [
        core("camera_node", common),
        core("policy_node", policy_overrides),
        core("executor_node", common),
    ]
    if with_rsp:
        actions.append(Node(package="robot_state_publisher", executable="robot_state_publisher",
                            name="robot_state_publisher", output="screen",
                            parameters=[{"robot_description": robot_description, "use_sim_time": use_sim_time,
                                         "publish_frequency": float(rsp.get("publish_frequency", 20.0))}]))
    if sim:
        if sim_installed:
            # The sim is the clock (it publishes /clock): it never follows one, as under `up`.
            actions.insert(0, Node(package=PACKAGE, executable="sim_node", name="sim_node", output="screen",
                                   parameters=[config], additional_env=_transport("sim_node"),
                                   on_exit=Shutdown(reason="sim_node exited")))
        else:
            actions.insert(0, LogInfo(msg="sim:=true but ki_vla_ros.sim_node is not installed: no sim started"))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="config/bimanual.yaml",
                              description="ROS 2 parameter file (relative to the package share dir or absolute)"),
        DeclareLaunchArgument("model", default_value="",
                              description="checkpoint folder, or model YAML (random weights); empty = config's"),
        DeclareLaunchArgument("device", default_value="", description="auto | cpu | cuda; empty = config's"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        DeclareLaunchArgument("sim", default_value="false", description="also start the MuJoCo sim node"),
        DeclareLaunchArgument("robot_state_publisher", default_value="true",
                              description="also start robot_state_publisher with the plain URDF"),
        OpaqueFunction(function=_nodes),
    ])
