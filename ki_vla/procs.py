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

"""Running the ROS graph's executables from the library (eval-sim, collect --bag) without importing ROS.

ki_vla never imports rclpy; where a command needs the graph it starts the ki_vla_ros executables as child
processes, each in its own process group, and talks to them through files.

A graph that outlives the command that started it keeps commanding the robot (or the sim) with nobody watching,
so children never outlive their parent: SIGTERM in the parent runs its cleanup (`exit_on_sigterm`), and on
Linux each child also gets SIGINT from the kernel when its parent dies any other way, SIGKILL included
(`die_with_parent`).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
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


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Popen `preexec_fn`: ask the kernel to SIGINT this child when its parent exits (Linux prctl; a no-op elsewhere).

    SIGINT, not SIGKILL, so rclpy nodes and `ki-vla-ros up` shut down cleanly and stop their own children. SIGINT and
    SIGTERM are reset to their defaults first: a command started in the background of a script inherits SIGINT
    *ignored* (POSIX), and Python then never turns it into KeyboardInterrupt, so neither this signal nor `stop`'s
    would reach the child (measured: a fresh-clone `make test` run with `&` left the child running)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM (what `kill` and `timeout` send) raise SystemExit, so `finally` blocks stop the children.

    Python's default SIGTERM action kills the process without unwinding. Only the main thread may install a
    handler; a handler the caller installed is kept."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_exit)


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in a new process group that dies with us, stdout and stderr to `log`."""
    exit_on_sigterm()
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=die_with_parent)


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


TRANSPORT_VAR = "FASTDDS_BUILTIN_TRANSPORTS"


def transport_env(images: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with Fast DDS's LARGE_DATA builtin transports for a process that moves camera
    images, unless the user chose a transport (kept as is, for every process). A process without images keeps
    the default transports: LARGE_DATA sends user data only over SHM / TCP, so a node on another host on default
    settings (UDP) would discover it and receive nothing (Fast DDS docs, "LARGE_DATA"; one host here, not
    measured across two)."""
    env = dict(os.environ if base is None else base)
    if images and TRANSPORT_VAR not in env:
        env[TRANSPORT_VAR] = "LARGE_DATA"
    return env


def ros_env(images: bool = True) -> dict[str, str]:
    """The environment for a graph process (`transport_env`), with unbuffered Python output for the logs.
    images=False for a launcher (`ki-vla-ros up`) that picks each child's transport itself."""
    return {**transport_env(images), "PYTHONUNBUFFERED": "1"}
