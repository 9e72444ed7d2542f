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

"""Every source file opens with the copyright line and the Apache-2.0 notice, where ament_copyright looks for them
(ament_copyright itself is not on PyPI, so this checks the same place: the first comment block)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("ki_vla", "ki_vla_ros", "test", "bench", "launch") for p in (ROOT / d).rglob("*.py")
                 if "build" not in p.relative_to(ROOT).parts) + [ROOT / "setup.py"]


@pytest.mark.copyright
@pytest.mark.linter
def test_every_source_file_has_the_licence_header():
    missing = []
    for path in SOURCES:
        head = path.read_text().splitlines()[:13]
        if not (head and re.fullmatch(r"# Copyright 20\d\d ki_vla_ros maintainers", head[0])
                and '# Licensed under the Apache License, Version 2.0 (the "License");' in head
                and head[-1] == "# limitations under the License."):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == [], f"no Apache-2.0 header (copy it from any other source file): {missing}"


@pytest.mark.copyright
@pytest.mark.linter
def test_the_licence_text_ships_with_both_distributions():
    """The full Apache-2.0 text beside the ROS package and inside the standalone `ki-vla` distribution (whose
    pyproject names it), the same file in both places."""
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert (ROOT / "ki_vla" / "LICENSE").read_text() == text
    assert 'license-files = ["LICENSE"]' in (ROOT / "ki_vla" / "pyproject.toml").read_text()
