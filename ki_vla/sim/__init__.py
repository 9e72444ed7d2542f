"""MuJoCo bimanual scenes and scripted demonstrations (no ROS)."""
