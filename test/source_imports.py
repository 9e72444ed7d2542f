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

"""What a source tree imports, read from its syntax trees (not by importing it: a node module cannot be imported
where ROS is missing). Shared by the packaging tests that check declared dependencies against the code."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

OURS = {"ki_vla", "ki_vla_ros", "__future__"}


def imported_modules(*roots: Path) -> set[str]:
    """Every absolute top-level module imported anywhere (module level or inside functions) under `roots`
    (folders or files), less the standard library and this repository's own packages."""
    names: set[str] = set()
    files = [f for r in roots for f in ([r] if r.is_file() else r.rglob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - OURS
