"""Datasets (LeRobot v3 layout), rosbag2 conversion, normalization and the co-training mix."""
