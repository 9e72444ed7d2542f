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

"""The ros2_control side for Gazebo / Isaac Sim / mock / real robots, checked statically (Gazebo and Isaac are not
run in CI): the generated descriptions parse with ROS's urdf_parser_py, their ros2_control joints and limits
are the executor's, and the controllers YAMLs name the controllers and joints config/bimanual.yaml commands."""
from pathlib import Path

import pytest
import yaml

from ki_vla.control.safety import parse_urdf_limits
from ki_vla.joints import CAMERA_NAMES, JOINT_NAMES
from ki_vla_ros.config import NODE_CONFIGS, load_node_config
from ki_vla_ros.description import HARDWARE, ros2_control_description

ROOT = Path(__file__).resolve().parents[1]
URDF = (ROOT / "urdf" / "aloha_vx300s.urdf").read_text()
CONFIG = ROOT / "config" / "bimanual.yaml"
CONTROLLERS = {"trajectory": ROOT / "config" / "ros2_controllers.yaml",
               "position": ROOT / "config" / "ros2_controllers_position.yaml"}
CONTROLLER_TYPES = {"trajectory": "joint_trajectory_controller/JointTrajectoryController",
                    "position": "position_controllers/JointGroupPositionController"}


def describe(hardware: str) -> str:
    return ros2_control_description(URDF, hardware, plugin="vendor_driver/Arm" if hardware == "real" else None,
                                    controllers_file=str(CONTROLLERS["trajectory"]))


@pytest.mark.parametrize("hardware", HARDWARE)
def test_description_parses_and_controls_the_executors_joints(hardware):
    from urdf_parser_py.urdf import URDF as Parser

    text = describe(hardware)
    robot = Parser.from_xml_string(text.encode())
    assert {j.name for j in Parser.from_xml_string(URDF.encode()).joints} <= {j.name for j in robot.joints}
    import xml.etree.ElementTree as ET

    system = ET.fromstring(text).find("ros2_control")
    commanded = [j for j in system.findall("joint") if j.find("command_interface") is not None]
    assert [j.get("name") for j in commanded] == list(JOINT_NAMES)
    limits = parse_urdf_limits(URDF)
    for joint in commanded:
        params = {p.get("name"): float(p.text) for p in joint.find("command_interface").findall("param")}
        lower, upper, _ = limits[joint.get("name")]
        assert (params["min"], params["max"]) == (lower, upper)
        assert {s.get("name") for s in joint.findall("state_interface")} == {"position", "velocity"}
    fingers = {j.get("name") for j in system.findall("joint") if j.get("mimic") == "true"}
    assert fingers == {f"{arm}_{side}_finger" for arm in ("left", "right") for side in ("left", "right")}
    assert parse_urdf_limits(text) == limits  # the executor reads the same limits from either file


def test_gazebo_description_has_what_gazebo_needs():
    from urdf_parser_py.urdf import URDF as Parser

    text = describe("gazebo")
    robot = Parser.from_xml_string(text.encode())
    assert all(link.inertial is not None for link in robot.links if link.name != "world")
    assert {f"{name}_link" for name in CAMERA_NAMES} <= {link.name for link in robot.links}
    assert "gz_ros2_control/GazeboSimSystem" in text and "gz_ros2_control-system" in text
    assert f"<parameters>{CONTROLLERS['trajectory']}</parameters>" in text
    for name in CAMERA_NAMES:
        assert f"<topic>{name}/image_raw</topic>" in text  # what camera_node subscribes ({name}/image_raw)


def test_isaac_description_uses_the_topic_bridge():
    text = describe("isaac")
    assert "topic_based_ros2_control/TopicBasedSystem" in text
    assert '<param name="joint_commands_topic">/isaac_joint_commands</param>' in text


@pytest.mark.parametrize("bad, match", [
    (dict(hardware="ode"), "hardware must be one of"),
    (dict(hardware="real"), "needs the lab's hardware plugin"),
    (dict(hardware="gazebo"), "needs controllers_file"),
    (dict(hardware="mock", joints=("left_waist", "left_elbow_typo")), "left_elbow_typo"),
])
def test_bad_inputs_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        ros2_control_description(URDF, **bad)


def _config_for(interface: str, tmp_path: Path) -> Path:
    """config/bimanual.yaml switched to `interface` the way README "Commanding the arms" says."""
    params = yaml.safe_load(CONFIG.read_text())
    shared = params["/**"]["ros__parameters"]
    suffix = {"trajectory": "joint_trajectory", "position": "commands"}[interface]
    shared["command_topics"] = [f"{t.split('/')[0]}/{suffix}" for t in shared["command_topics"]]
    shared["command_interface"] = interface
    out = tmp_path / f"{interface}.yaml"
    out.write_text(yaml.safe_dump(params))
    return out


@pytest.mark.parametrize("interface", ["trajectory", "position"])
def test_controllers_match_the_executors_commands(interface, tmp_path):
    ex = load_node_config(NODE_CONFIGS["executor_node"], _config_for(interface, tmp_path), "executor_node")
    assert ex.command_interface == interface
    doc = yaml.safe_load(CONTROLLERS[interface].read_text())
    manager = doc["controller_manager"]["ros__parameters"]
    assert manager["joint_state_broadcaster"]["type"] == "joint_state_broadcaster/JointStateBroadcaster"
    for topic, joints in zip(ex.command_topics, ex.command_joints):
        name = topic.strip("/").split("/")[0]
        assert manager[name]["type"] == CONTROLLER_TYPES[interface], name
        assert doc[name]["ros__parameters"]["joints"] == joints.split(","), name
        if interface == "trajectory":
            jtc = doc[name]["ros__parameters"]
            assert jtc["interpolate_from_desired_state"] is True and jtc["allow_partial_joints_goal"] is False
            assert jtc["cmd_timeout"] > ex.chunk_timeout  # the executor holds before the controller stops
            assert jtc["command_interfaces"] == ["position"]


def test_describe_cli(tmp_path, capsys):
    from ki_vla_ros.cli import main

    out = tmp_path / "aloha.urdf"
    assert main(["describe", "--hardware", "isaac", "--param", "joint_states_topic=/sim/joint_states",
                 "--out", str(out)]) == 0
    assert '<param name="joint_states_topic">/sim/joint_states</param>' in out.read_text()
    assert main(["describe", "--hardware", "real"]) == 2
    assert "needs the lab's hardware plugin" in capsys.readouterr().err
    assert main(["describe", "--hardware", "mock", "--urdf", str(tmp_path / "missing.urdf")]) == 2
    assert "not found" in capsys.readouterr().err
