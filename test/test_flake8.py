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

"""ament_flake8, the ROS 2 Python style check, at the project's line length (setup.cfg's [flake8] section)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Explicit paths: a checkout also holds .venv, build/ and install/, which are not ours to lint.
PATHS = ["ki_vla", "ki_vla_ros", "test", "bench", "launch", "setup.py"]


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8(monkeypatch):
    from ament_flake8.main import main_with_errors

    monkeypatch.chdir(ROOT)
    rc, errors = main_with_errors(argv=["--config", "setup.cfg", *PATHS])
    assert rc == 0, f"{len(errors)} code style error(s):\n" + "\n".join(errors)
