"""Bimanual KI-VLA graph: camera_node, policy_node, executor_node, robot_state_publisher (+ sim_node).

    ros2 launch ki_vla_ros bimanual.launch.py [model:=PATH] [device:=cuda] [use_sim_time:=true] [sim:=true]
        [config:=/path/to/bimanual.yaml]

Thin on purpose: every parameter lives in config/bimanual.yaml (a ROS 2 parameter file), which
`ki-vla-ros up` reads too, so both start the same graph. Paths resolve next to this file, which is the
repository in a source checkout and share/ki_vla_ros once installed.
"""
import importlib.util
import os

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

SHARE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "ki_vla_ros"


def _path(p: str) -> str:
    return p if os.path.isabs(p) else os.path.join(SHARE, p)


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _nodes(context, *args, **kwargs):
    config = _path(LaunchConfiguration("config").perform(context))
    model = LaunchConfiguration("model").perform(context)
    device = LaunchConfiguration("device").perform(context)
    use_sim_time = _truthy(LaunchConfiguration("use_sim_time").perform(context))
    sim = _truthy(LaunchConfiguration("sim").perform(context))
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
    actions = [
        Node(package=PACKAGE, executable="camera_node", name="camera_node", output="screen",
             parameters=[config, common]),
        Node(package=PACKAGE, executable="policy_node", name="policy_node", output="screen",
             parameters=[config, policy_overrides]),
        Node(package=PACKAGE, executable="executor_node", name="executor_node", output="screen",
             parameters=[config, common]),
        Node(package="robot_state_publisher", executable="robot_state_publisher", name="robot_state_publisher",
             output="screen",
             parameters=[{"robot_description": robot_description, "use_sim_time": use_sim_time,
                          "publish_frequency": float(rsp.get("publish_frequency", 20.0))}]),
    ]
    if sim:
        if sim_installed:
            actions.insert(0, Node(package=PACKAGE, executable="sim_node", name="sim_node", output="screen",
                                   parameters=[config, common]))
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
        # Large camera frames across processes need Fast DDS's LARGE_DATA builtin transport (ARCHITECTURE.md).
        SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS",
                               os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")),
        OpaqueFunction(function=_nodes),
    ])
