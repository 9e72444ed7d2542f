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

"""ament_python package installing both halves: `ki_vla` (ROS-free library) and `ki_vla_ros` (nodes).

Works under colcon (ROS 2 install: executables in lib/ki_vla_ros, data in share/ki_vla_ros) and under
plain pip (the Makefile's venv).
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ki_vla_ros"


def tree(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern, recursive=True) if not p.endswith("/"))


def share(subdir: str, pattern: str) -> tuple[str, list[str]]:
    return (f"share/{PACKAGE}/{subdir}", tree(pattern))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["ki_vla", "ki_vla.*", "ki_vla_ros", "ki_vla_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml", "LICENSE"]),
        share("launch", "launch/*.py"),
        share("config", "config/*.yaml"),
        share("config/model", "config/model/*.yaml"),
        share("config/train", "config/train/*.yaml"),
        share("urdf", "urdf/*"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ki_vla_ros maintainers",
    maintainer_email="maintainers@ki-vla-ros.dev",
    description="Knowledge-insulated VLA policies for bimanual robots, with ROS 2 nodes.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "ki-vla = ki_vla.cli:main",
            "ki-vla-ros = ki_vla_ros.cli:main",
            "camera_node = ki_vla_ros.camera_node:main",
            "policy_node = ki_vla_ros.policy_node:main",
            "executor_node = ki_vla_ros.executor_node:main",
            "sim_node = ki_vla_ros.sim_node:main",
            "sim_evaluator = ki_vla_ros.sim_evaluator:main",
            "scripted_recorder = ki_vla_ros.scripted_recorder:main",
        ],
    },
)
