"""The bimanual joint layout shared by the sim, datasets, /joint_states and commands (ARCHITECTURE.md)."""
from __future__ import annotations

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
LEFT_JOINTS = tuple(f"left_{j}" for j in ARM_JOINTS)
RIGHT_JOINTS = tuple(f"right_{j}" for j in ARM_JOINTS)
JOINT_NAMES = LEFT_JOINTS + RIGHT_JOINTS
NUM_JOINTS = len(JOINT_NAMES)  # 14
CONTROL_HZ = 50.0
GRIPPER_INDICES = (LEFT_JOINTS.index("left_gripper"), NUM_JOINTS // 2 + RIGHT_JOINTS.index("right_gripper"))
