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

"""The bimanual joint layout shared by the sim, datasets, /joint_states and commands (ARCHITECTURE.md)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
LEFT_JOINTS = tuple(f"left_{j}" for j in ARM_JOINTS)
RIGHT_JOINTS = tuple(f"right_{j}" for j in ARM_JOINTS)
JOINT_NAMES = LEFT_JOINTS + RIGHT_JOINTS
NUM_JOINTS = len(JOINT_NAMES)  # 14
CONTROL_HZ = 50.0
GRIPPER_INDICES = (LEFT_JOINTS.index("left_gripper"), NUM_JOINTS // 2 + RIGHT_JOINTS.index("right_gripper"))

# The default robot's other names, defined once (configs override them): its cameras (ALOHA's) and its arm
# controllers' command topics, relative so a namespace separates two robots: JointTrajectoryControllers
# (command_interface "trajectory") and streaming position controllers ("position").
CAMERA_NAMES = ("cam_high", "cam_left_wrist", "cam_right_wrist")
TRAJECTORY_TOPICS = ("left_arm_controller/joint_trajectory", "right_arm_controller/joint_trajectory")
POSITION_TOPICS = ("left_arm_controller/commands", "right_arm_controller/commands")

StateSource = tuple[str, tuple[str, ...], tuple[int, ...]]   # (namespace, joint names there, policy indices)


@dataclass(frozen=True)
class CommandGroup:
    """One controller: its command topic, its joints as the controller names them, their policy indices."""

    topic: str
    joint_names: tuple[str, ...]
    indices: tuple[int, ...]


@dataclass(frozen=True)
class RobotLayout:
    """How the policy's 14 joints meet a robot's /joint_states and controllers (ARCHITECTURE.md "ROS 2 interface").

    Why qualified names: a bimanual Interbotix/ALOHA setup runs one ros2_control stack per arm in its own namespace,
    each with unprefixed joint names (`waist` .. `wrist_rotate`, `left_finger`), its own `joint_states` and a separate
    6-joint arm controller and 1-joint gripper controller. A joint name "follower_left/waist" is joint `waist` read
    from `follower_left/<joint_states topic>` and commanded as `waist`; a plain name is read from the joint_states topic
    itself. `command_joints[k]` lists (comma-separated, qualified) the joints of `command_topics[k]` in the order its
    controller wants them; every policy joint belongs to exactly one controller.
    """

    joint_names: tuple[str, ...]            # qualified, in policy order (JOINT_NAMES order)
    groups: tuple[CommandGroup, ...]
    state_sources: tuple[StateSource, ...]

    @classmethod
    def from_parameters(cls, joint_names: Sequence[str], command_topics: Sequence[str],
                        command_joints: Sequence[str]) -> "RobotLayout":
        """Validated layout; ValueError with the reason (the node's configure reports it)."""
        sources = state_sources(joint_names)
        names = tuple(str(n).strip() for n in joint_names)
        if len(command_topics) != len(command_joints) or not command_topics:
            raise ValueError(f"command_topics ({len(command_topics)}) and command_joints ({len(command_joints)}) must "
                             "be non-empty and of equal length: one comma-separated joint list per controller topic")
        if len(set(command_topics)) != len(command_topics) or any(not t for t in command_topics):
            raise ValueError(f"command_topics must be unique and non-empty, got {list(command_topics)}")
        index = {n: i for i, n in enumerate(names)}
        groups, seen = [], {}
        for topic, joints in zip(command_topics, command_joints):
            members = [j.strip() for j in str(joints).split(",") if j.strip()]
            unknown = [j for j in members if j not in index]
            if not members or unknown:
                raise ValueError(f"command_joints for {topic}: {members or 'empty'}; unknown {unknown} "
                                 f"(each must be one of joint_names)")
            for j in members:
                if j in seen:
                    raise ValueError(f"joint {j} is commanded by both {seen[j]} and {topic}")
                seen[j] = topic
            groups.append(CommandGroup(str(topic), tuple(split_joint_name(j)[1] for j in members),
                                       tuple(index[j] for j in members)))
        missing = [n for n in names if n not in seen]
        if missing:
            raise ValueError(f"joints {missing} are in no controller's command_joints: the executor would never "
                             "command them")
        for g in groups:
            if len(set(g.joint_names)) != len(g.joint_names):
                raise ValueError(f"{g.topic}: two joints with one name {list(g.joint_names)} (different namespaces "
                                 "need different controllers)")
        return cls(names, tuple(groups), sources)

    @classmethod
    def default(cls, command_topics: Sequence[str] = TRAJECTORY_TOPICS) -> "RobotLayout":
        """Our sim's layout: one /joint_states with JOINT_NAMES, one 7-joint controller per arm (gripper included)."""
        return cls.from_parameters(JOINT_NAMES, command_topics, (",".join(LEFT_JOINTS), ",".join(RIGHT_JOINTS)))


def state_sources(joint_names: Sequence[str]) -> tuple[StateSource, ...]:
    """The joint_states sources of qualified `joint_names` (RobotLayout): one per namespace, in first-seen order.
    ValueError unless there are NUM_JOINTS unique, non-empty names."""
    names = tuple(str(n).strip() for n in joint_names)
    if len(names) != NUM_JOINTS:
        raise ValueError(f"joint_names must list the policy's {NUM_JOINTS} joints ({', '.join(JOINT_NAMES)} order), "
                         f"got {len(names)}")
    if any(not n or n.endswith("/") for n in names) or len(set(names)) != len(names):
        raise ValueError(f"joint_names must be unique and non-empty, got {list(names)}")
    out: dict[str, tuple[list[str], list[int]]] = {}
    for i, n in enumerate(names):
        ns, short = split_joint_name(n)
        bucket = out.setdefault(ns, ([], []))
        bucket[0].append(short)
        bucket[1].append(i)
    return tuple((ns, tuple(v[0]), tuple(v[1])) for ns, v in out.items())


def state_topic(namespace: str, joint_states_topic: str) -> str:
    """Where a namespace's joints are published: `<namespace>/<joint_states_topic>`, or the topic itself."""
    return f"{namespace}/{joint_states_topic.lstrip('/')}" if namespace else joint_states_topic


def split_joint_name(qualified: str) -> tuple[str, str]:
    """(namespace, name): "follower_left/waist" -> ("follower_left", "waist"); "left_waist" -> ("", "left_waist")."""
    ns, _, name = qualified.rpartition("/")
    return ns, name
