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

"""LeRobot datasets on local disk: the format (`format`), reading v3.0 and v2.x (`reader`), writing v3.0 (`writer`)."""
from ki_vla.data.lerobot.format import camera_key
from ki_vla.data.lerobot.reader import LeRobotDataset
from ki_vla.data.lerobot.writer import LeRobotDatasetWriter
from ki_vla.data.normalize import ACTION_KEY, STATE_KEY

__all__ = ["ACTION_KEY", "STATE_KEY", "LeRobotDataset", "LeRobotDatasetWriter", "camera_key"]
