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

"""Children of a graph-starting command never outlive it (an orphaned graph keeps commanding the robot)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = r"""
import sys, time
from pathlib import Path
from ki_vla import procs
work = Path(sys.argv[1])
child = procs.start([sys.executable, "-c", "import time; time.sleep(120)"], work / "child.log")
(work / "child.pid").write_text(str(child.pid))
try:
    while True:
        time.sleep(0.05)
finally:
    procs.stop(child, grace=5.0)
    (work / "cleaned").write_text("yes")
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script does to cmd (POSIX)


def _start_parent(tmp_path: Path, sigint_ignored: bool = False) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)],
                              preexec_fn=_ignore_sigint if sigint_ignored else None)
    deadline = time.monotonic() + 30
    while not (tmp_path / "child.pid").exists():
        assert time.monotonic() < deadline and parent.poll() is None, "parent did not start its child"
        time.sleep(0.05)
    time.sleep(0.2)  # the pid file is written right after Popen returns
    return parent, int((tmp_path / "child.pid").read_text())


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_sigterm_to_the_parent_runs_its_cleanup_and_stops_the_child(tmp_path: Path) -> None:
    parent, child = _start_parent(tmp_path)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=20) == 128 + signal.SIGTERM
    assert (tmp_path / "cleaned").exists()
    assert _wait_gone(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux prctl")
@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "started-in-background"])
def test_child_stops_when_the_parent_is_killed_outright(tmp_path: Path, sigint_ignored: bool) -> None:
    parent, child = _start_parent(tmp_path, sigint_ignored)
    parent.kill()
    parent.wait(timeout=10)
    assert not (tmp_path / "cleaned").exists()  # SIGKILL: no cleanup ran, the kernel stopped the child
    assert _wait_gone(child)
