"""Running the ROS graph's executables from the library (eval-sim, collect --bag) without importing ROS.

ki_vla never imports rclpy; where a command needs the graph it starts the ki_vla_ros executables as child
processes, each in its own process group, and talks to them through files.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml


class _NoAliasDumper(yaml.SafeDumper):
    """rcl's parameter-file parser rejects YAML anchors/aliases, which PyYAML emits for repeated lists."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def write_ros_params(params: dict[str, Any], path: Path) -> Path:
    """A ROS 2 parameter file rcl can parse."""
    path.write_text(yaml.dump(params, Dumper=_NoAliasDumper, sort_keys=False))
    return path


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in a new process group, stdout and stderr to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGINT to the process group (nodes and `ki-vla-ros up` shut down cleanly), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def log_tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def ros_env() -> dict[str, str]:
    """The environment for graph processes: Fast DDS's LARGE_DATA transport (camera images across processes)
    unless the user chose a transport, unbuffered Python output for the logs."""
    return {**os.environ, "FASTDDS_BUILTIN_TRANSPORTS": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA"),
            "PYTHONUNBUFFERED": "1"}
