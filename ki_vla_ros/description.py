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

"""The robot description a ros2_control stack needs: this project's URDF plus `<ros2_control>` tags for one
hardware backend, picked by a parameter (the switch a xacro `use_sim` argument would be; done in Python because
xacro is not on PyPI and the URDF is the one the executor reads its limits from, so both stay one file).

Backends: `gazebo` (gz_ros2_control inside Gazebo Sim, plus its system plugin, camera sensors and the
inertia Gazebo needs), `isaac` (topic_based_ros2_control: Isaac Sim's ROS 2 bridge publishes joint states and
reads joint commands on two topics), `mock` (mock_components/GenericSystem: the controllers without a robot)
and `real` (the lab's hardware plugin and its parameters, e.g. Interbotix's). The command interfaces are
position on the 14 joints the executor commands (JointTrajectoryControllers named as config/bimanual.yaml's
command topics: config/ros2_controllers.yaml); the finger joints follow the virtual gripper joint through the
URDF's `<mimic>` tags.

`ki-vla-ros describe --hardware gazebo > aloha.urdf` writes it; launch/bimanual_gazebo.launch.py builds it.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

from ki_vla.control.safety import parse_urdf_limits
from ki_vla.joints import CAMERA_NAMES, JOINT_NAMES

HARDWARE = ("gazebo", "isaac", "mock", "real")
PLUGINS = {
    "gazebo": "gz_ros2_control/GazeboSimSystem",
    "isaac": "topic_based_ros2_control/TopicBasedSystem",
    "mock": "mock_components/GenericSystem",
}
# Isaac Sim's side of topic_based_ros2_control (the names its ROS 2 examples use; set them in the OmniGraph's
# "ROS2 Publish Joint State" / "ROS2 Subscribe Joint State" nodes).
ISAAC_TOPICS = {"joint_commands_topic": "/isaac_joint_commands", "joint_states_topic": "/isaac_joint_states"}
# Where the Gazebo cameras sit: cam_high above the table centre looking down, the wrist cameras on the grippers
# (the ALOHA layout; gym-aloha's scene has the same three views).
CAMERA_MOUNTS = {
    "cam_high": ("world", "0 0 0.8", "0 1.5708 0"),
    "cam_left_wrist": ("left_gripper_link", "0.05 0 0.06", "0 0.6 0"),
    "cam_right_wrist": ("right_gripper_link", "0.05 0 0.06", "0 0.6 0"),
}


def ros2_control_description(urdf: str, hardware: str, *, joints: Sequence[str] = JOINT_NAMES,
                             plugin: str | None = None, params: Mapping[str, str] | None = None,
                             controllers_file: str | None = None, image_size: tuple[int, int] = (480, 640),
                             camera_rate: float = 30.0) -> str:
    """`urdf` with a `<ros2_control>` system for `hardware`; ValueError names what is wrong with the inputs.

    `plugin`/`params` choose and configure the hardware plugin (`real` requires a plugin; the others have
    defaults). `controllers_file` is the controllers YAML gz_ros2_control loads (gazebo only; required there).
    """
    if hardware not in HARDWARE:
        raise ValueError(f"hardware must be one of {HARDWARE}, got {hardware!r}")
    plugin = plugin or PLUGINS.get(hardware)
    if not plugin:
        raise ValueError("hardware 'real' needs the lab's hardware plugin, e.g. "
                         "plugin='interbotix_xs_ros_control/XSHardwareInterface'")
    if hardware == "gazebo" and not controllers_file:
        raise ValueError("hardware 'gazebo' needs controllers_file (the YAML gz_ros2_control loads)")
    limits = parse_urdf_limits(urdf)
    missing = [j for j in joints if j not in limits]
    if missing:
        raise ValueError(f"joints {missing} are not movable joints of the URDF")
    root = ET.fromstring(urdf)
    mimics = [j.get("name") for j in root.iter("joint") if j.find("mimic") is not None]

    system = ET.SubElement(root, "ros2_control", name=root.get("name", "robot"), type="system")
    hw = ET.SubElement(system, "hardware")
    ET.SubElement(hw, "plugin").text = plugin
    for key, value in {**(ISAAC_TOPICS if hardware == "isaac" else {}), **(params or {})}.items():
        ET.SubElement(hw, "param", name=str(key)).text = str(value)
    for name in joints:
        lower, upper, _ = limits[name]
        joint = ET.SubElement(system, "joint", name=name)
        command = ET.SubElement(joint, "command_interface", name="position")
        if math.isfinite(lower) and math.isfinite(upper):
            ET.SubElement(command, "param", name="min").text = repr(lower)
            ET.SubElement(command, "param", name="max").text = repr(upper)
        state = ET.SubElement(joint, "state_interface", name="position")
        start = min(max(0.0, lower), upper)  # where a sim starts: zero, or the nearest limit
        ET.SubElement(state, "param", name="initial_value").text = repr(start)
        ET.SubElement(joint, "state_interface", name="velocity")
    for name in mimics:  # the fingers: state only, driven through <mimic> by the backends that support it
        joint = ET.SubElement(system, "joint", name=name, mimic="true")
        ET.SubElement(joint, "state_interface", name="position")

    if hardware == "gazebo":
        _add_gazebo(root, controllers_file, image_size, camera_rate)
    ET.indent(root, space="  ")
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _add_gazebo(root: ET.Element, controllers_file: str, image_size: tuple[int, int], rate: float) -> None:
    """What Gazebo needs beyond ros2_control: mass on every link (links without <inertial> are dropped when the
    URDF becomes SDF, which would cut the arm apart), the plugin that runs the controller manager, and the three
    cameras as sensors (bridged to ROS as `{name}/image_raw` by the launch file). Masses are rough (0.2 kg,
    a 5 cm cube's inertia): enough for position-controlled joints, not a dynamics model of the vx300s."""
    for link in root.iter("link"):
        if link.get("name") != "world" and link.find("inertial") is None:
            inertial = ET.SubElement(link, "inertial")
            ET.SubElement(inertial, "mass", value="0.2")
            ET.SubElement(inertial, "inertia", ixx="8.3e-05", iyy="8.3e-05", izz="8.3e-05", ixy="0", ixz="0", iyz="0")
    links = {link.get("name") for link in root.iter("link")}
    height, width = image_size
    for name in CAMERA_NAMES:
        parent, xyz, rpy = CAMERA_MOUNTS[name]
        if parent not in links:
            raise ValueError(f"camera {name} mounts on link {parent!r}, which the URDF lacks")
        frame = f"{name}_link"
        link = ET.SubElement(root, "link", name=frame)
        inertial = ET.SubElement(link, "inertial")
        ET.SubElement(inertial, "mass", value="0.01")
        ET.SubElement(inertial, "inertia", ixx="1e-06", iyy="1e-06", izz="1e-06", ixy="0", ixz="0", iyz="0")
        joint = ET.SubElement(root, "joint", name=f"{name}_joint", type="fixed")
        ET.SubElement(joint, "parent", link=parent)
        ET.SubElement(joint, "child", link=frame)
        ET.SubElement(joint, "origin", xyz=xyz, rpy=rpy)
        gz = ET.SubElement(root, "gazebo", reference=frame)
        sensor = ET.SubElement(gz, "sensor", name=name, type="camera")
        ET.SubElement(sensor, "topic").text = f"{name}/image_raw"
        ET.SubElement(sensor, "update_rate").text = repr(float(rate))
        ET.SubElement(sensor, "always_on").text = "true"
        camera = ET.SubElement(sensor, "camera")
        ET.SubElement(camera, "horizontal_fov").text = "1.2"
        image = ET.SubElement(camera, "image")
        ET.SubElement(image, "width").text = str(width)
        ET.SubElement(image, "height").text = str(height)
        ET.SubElement(image, "format").text = "R8G8B8"
    gz = ET.SubElement(root, "gazebo")
    plugin = ET.SubElement(gz, "plugin", filename="gz_ros2_control-system",
                           name="gz_ros2_control::GazeboSimROS2ControlPlugin")
    ET.SubElement(plugin, "parameters").text = controllers_file
    sensors = ET.SubElement(gz, "plugin", filename="gz-sim-sensors-system", name="gz::sim::systems::Sensors")
    ET.SubElement(sensors, "render_engine").text = "ogre2"
