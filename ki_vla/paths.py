"""Finding the shipped config files from anywhere.

Configs name each other with repo-relative paths (`config/model/tiny.yaml`). Those work from the repo root;
from elsewhere (a torchrun worker's cwd, a ROS node started by launch) we also look in the source checkout
this package runs from and in the colcon install's share/ki_vla_ros.
"""
from __future__ import annotations

import sys
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def search_roots() -> list[Path]:
    roots = [_SOURCE_ROOT]
    share = Path(sys.prefix) / "share" / "ki_vla_ros"
    if share.is_dir():
        roots.append(share)
    return roots


def resolve(path: str | Path) -> Path:
    """`path` itself when it exists, else the first shipped file of that relative name; unchanged otherwise
    (so the caller's "not found" error names what the user wrote)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    for root in search_roots():
        candidate = root / p
        if candidate.exists():
            return candidate
    return p
