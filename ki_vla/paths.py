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

"""Finding shipped files (configs, URDF, model YAMLs) from anywhere.

Configs name each other with repo-relative paths (`config/model/tiny.yaml`). They are looked up, in order,
relative to the current directory, the colcon install's share/ki_vla_ros (via the ament index, when ROS is
installed), the pip install's data files (sys.prefix/share/ki_vla_ros), the source checkout this package
runs from and the package itself: a torchrun worker, a node started by `ros2 launch` and a user in another folder
all find them.

The model and training recipes (`config/model`, `config/train`) live in the package (`ki_vla/config/`, package
data of the `ki-vla` distribution; the checkout's `config/model` and `config/train` are links to them), so a
`pip install ./ki_vla` on a GPU cluster resolves `--config config/train/pi05.yaml` from any folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "ki_vla_ros"
_PACKAGE_ROOT = Path(__file__).resolve().parent
_SOURCE_ROOT = _PACKAGE_ROOT.parent


def _ament_share() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # no ament index (pip-only machine) or the package is not installed through colcon
        return None


def candidates(path: str | Path) -> list[Path]:
    """Every place `path` is looked for, in order (just `path` when it is absolute)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    roots = [Path.cwd(), _ament_share(), Path(sys.prefix) / "share" / PACKAGE, _SOURCE_ROOT,
             _PACKAGE_ROOT]
    seen: list[Path] = []
    for root in roots:
        if root is not None and (root / p) not in seen:
            seen.append(root / p)
    return seen


def resolve(path: str | Path) -> Path:
    """The first existing candidate; `path` unchanged when none exists (the caller's error names it)."""
    return next((c for c in candidates(path) if c.exists()), Path(path).expanduser())


def require(path: str | Path) -> Path:
    """The first existing candidate, or FileNotFoundError listing every place tried."""
    tried = candidates(path)
    for c in tried:
        if c.exists():
            return c
    raise FileNotFoundError(f"{path} not found; tried {', '.join(str(c) for c in tried)}")
