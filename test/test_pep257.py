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

"""ament_pep257, the ROS 2 docstring check.

Ament's convention less the codes the project's docstring style breaks on purpose: a summary may wrap over
lines (D205, D400, D415), the closing quotes follow the last line of text (D209), the summary starts on the
first line (D213; ament ignores D212, its opposite, already) and a docstring may describe rather than command
(D401: docstrings here say why, not what); sections are Google style (`Raises:` on its own line), which the
numpy-section checks misread (D406, D407, D413).
"""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["ki_vla", "ki_vla_ros", "test", "bench", "launch", "setup.py"]
PROJECT_STYLE = ["D205", "D209", "D213", "D400", "D415", "D401", "D406", "D407", "D413"]


@pytest.mark.pep257
@pytest.mark.linter
def test_pep257(monkeypatch):
    from ament_pep257.main import main

    monkeypatch.chdir(ROOT)
    assert main(argv=[*PATHS, "--add-ignore", *PROJECT_STYLE]) == 0, "docstring style errors (printed above)"
