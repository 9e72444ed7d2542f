"""LeRobot datasets on local disk: the format (`format`), reading v3.0 and v2.x (`reader`), writing v3.0 (`writer`)."""
from ki_vla.data.lerobot.format import camera_key
from ki_vla.data.lerobot.reader import LeRobotDataset
from ki_vla.data.lerobot.writer import LeRobotDatasetWriter
from ki_vla.data.normalize import ACTION_KEY, STATE_KEY

__all__ = ["ACTION_KEY", "STATE_KEY", "LeRobotDataset", "LeRobotDatasetWriter", "camera_key"]
