"""ki_vla_ros: thin ROS 2 nodes over the ki_vla library."""
