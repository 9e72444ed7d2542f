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

"""The bimanual KI-VLA graph on a Gazebo Sim robot (gz_ros2_control) instead of the MuJoCo sim node.

    ros2 launch ki_vla_ros bimanual_gazebo.launch.py [model:=PATH] [device:=cuda] [world:=empty.sdf]
        [config:=/path/to/bimanual.yaml] [controllers:=/path/to/ros2_controllers.yaml] [gui:=true]

Gazebo runs the robot: the description is urdf/aloha_vx300s.urdf with gz_ros2_control tags, cameras and inertia
(ki_vla_ros.description, hardware "gazebo"), its controller manager loads config/ros2_controllers.yaml (or
ros2_controllers_position.yaml when the config's command_interface is "position"), and the
spawner activates joint_state_broadcaster plus the controllers config/bimanual.yaml's executor commands (the two
JointTrajectoryControllers, or the JointGroupPositionControllers when its command_interface is "position").
ros_gz_bridge carries /clock and the three camera topics; our nodes (bimanual.launch.py, without its own
robot_state_publisher) follow /clock. Needs ros_gz_sim, ros_gz_bridge, gz_ros2_control and the controllers
(not declared in package.xml, so a robot-only install does not pull Gazebo). The default world is empty: pass
a world with the table and objects of your task. Not run in CI: the tests check
that it parses and that the description and controller names it builds match the graph's config.
"""
import os

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "ki_vla_ros"
# the controllers YAML for each of the executor's command interfaces (config/bimanual.yaml command_interface)
CONTROLLERS = {"trajectory": "config/ros2_controllers.yaml", "position": "config/ros2_controllers_position.yaml"}


def _path(p: str) -> str:
    from ki_vla.paths import require  # the lookup every launch file and `ki-vla-ros up` use

    return str(require(p))


def _share(package: str) -> str:
    from ament_index_python.packages import get_package_share_directory

    return get_package_share_directory(package)


def _robot(context, *args, **kwargs):
    from ki_vla.joints import CAMERA_NAMES
    from ki_vla_ros.config import NODE_CONFIGS, load_node_config
    from ki_vla_ros.description import ros2_control_description

    config = _path(LaunchConfiguration("config").perform(context))
    gui = LaunchConfiguration("gui").perform(context).strip().lower() in ("1", "true", "yes", "on")
    with open(config) as f:
        params = yaml.safe_load(f)
    # what the executor will command, read the way the executor reads it (its section over the shared one, validated)
    executor = load_node_config(NODE_CONFIGS["executor_node"], config, "executor_node")
    controllers = LaunchConfiguration("controllers").perform(context) or CONTROLLERS[executor.command_interface]
    controllers = _path(controllers)
    rsp = params.get("robot_state_publisher", {}).get("ros__parameters", {})
    with open(_path(rsp.get("urdf_path", "urdf/aloha_vx300s.urdf"))) as f:
        description = ros2_control_description(f.read(), "gazebo", controllers_file=controllers)
    # the controllers the executor commands: "<controller>/<topic>" in command_topics
    commanded = [t.strip("/").split("/")[0] for t in executor.command_topics]
    world = LaunchConfiguration("world").perform(context)
    return [
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(_share("ros_gz_sim"), "launch", "gz_sim.launch.py")),
            launch_arguments={"gz_args": f"-r {world}" + ("" if gui else " -s")}.items()),
        Node(package="robot_state_publisher", executable="robot_state_publisher", output="screen",
             parameters=[{"robot_description": description, "use_sim_time": True}]),
        Node(package="ros_gz_sim", executable="create", output="screen",
             arguments=["-topic", "robot_description", "-name", "aloha_bimanual"]),
        Node(package="ros_gz_bridge", executable="parameter_bridge", output="screen",
             arguments=["/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock"]
             + [f"/{name}/image_raw@sensor_msgs/msg/Image[gz.msgs.Image" for name in CAMERA_NAMES]),
        Node(package="controller_manager", executable="spawner", output="screen",
             arguments=["joint_state_broadcaster", *commanded, "--param-file", controllers]),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "bimanual.launch.py")),
            launch_arguments={"config": config, "model": LaunchConfiguration("model").perform(context),
                              "device": LaunchConfiguration("device").perform(context), "use_sim_time": "true",
                              "sim": "false", "robot_state_publisher": "false"}.items()),
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="config/bimanual.yaml", description="the graph's parameters"),
        DeclareLaunchArgument("controllers", default_value="",
                              description="the controllers YAML gz_ros2_control loads; empty = the one for the "
                                          "config's command_interface"),
        DeclareLaunchArgument("model", default_value="", description="checkpoint folder; empty = config's"),
        DeclareLaunchArgument("device", default_value="", description="auto | cpu | cuda; empty = config's"),
        DeclareLaunchArgument("world", default_value="empty.sdf", description="Gazebo world file"),
        DeclareLaunchArgument("gui", default_value="false", description="start the Gazebo GUI too"),
        OpaqueFunction(function=_robot),
    ])
