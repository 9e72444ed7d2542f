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

"""`ki-vla-ros up`: the launch file's node graph for machines without `ros2 launch`; `ki-vla-ros say`: an
instruction for it; `ki-vla-ros status`: what the running graph is doing (ki_vla_ros.status);
`ki-vla-ros describe`: the URDF with <ros2_control> tags for a Gazebo, Isaac Sim, mock or real robot
(ki_vla_ros.description).

Why one process per node (not one process with a MultiThreadedExecutor): the executor's 50 Hz timer must
not share a Python interpreter (GIL, garbage collector pauses) with model inference and image decoding; a
crash in one node must not take the control loop with it; and it is what `ros2 launch` does, so both ways
of starting the graph behave the same. The Fast DDS LARGE_DATA transport is set for every child because
it must be in the environment before a DDS participant exists.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from types import FrameType

from pathlib import Path

from ki_vla import procs
from ki_vla_ros.config import DEFAULT_CONFIG
from ki_vla_ros.description import HARDWARE
from ki_vla_ros.graph import GraphPlan, build_plan, graph_env

STOP_GRACE_S = 10.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ki-vla-ros", description="ROS 2 runtime of ki_vla: start the node graph.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start camera, policy and executor nodes (and the sim) from a config")
    up.add_argument("--config", default=DEFAULT_CONFIG, help="ROS 2 parameter file (default %(default)s)")
    up.add_argument("--model", default=None, help="checkpoint folder, or model YAML (random weights, warns)")
    up.add_argument("--device", default=None, help="policy device: auto | cpu | cuda[:N]")
    up.add_argument("--sim", action="store_true", help="also start the MuJoCo sim node (when installed)")
    up.add_argument("--use-sim-time", action="store_true", help="nodes follow /clock")
    up.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    up.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    say = sub.add_parser("say", help="publish an instruction for the policy (like `ros2 topic pub --once`)")
    say.add_argument("text", help='the instruction, e.g. "transfer the red cube"')
    say.add_argument("--topic", default="/instruction", help="instruction topic (default %(default)s)")
    say.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a subscriber (default 5)")
    st = sub.add_parser("status", help="the running graph: nodes, lifecycle states, topic rates, diagnostics")
    st.add_argument("--window", type=float, default=2.0, help="seconds to count messages (default 2)")
    st.add_argument("--discovery", type=float, default=1.0, help="seconds to discover the graph first (default 1)")
    st.add_argument("--json", action="store_true", help="print JSON instead of the table")
    de = sub.add_parser("describe", help="the URDF with <ros2_control> tags for Gazebo, Isaac Sim, mock or real "
                                         "hardware (ki_vla_ros.description)")
    de.add_argument("--hardware", required=True, choices=HARDWARE, help="the ros2_control backend")
    de.add_argument("--urdf", default="urdf/aloha_vx300s.urdf", help="robot description (default %(default)s)")
    de.add_argument("--plugin", default=None, help="hardware plugin (required for real; defaults for the others)")
    de.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="hardware plugin parameter (repeatable; e.g. joint_commands_topic=/isaac_joint_commands)")
    de.add_argument("--controllers", default="config/ros2_controllers.yaml",
                    help="controllers YAML gz_ros2_control loads (gazebo; default %(default)s)")
    de.add_argument("--out", default=None, help="write here instead of stdout")
    return p


def _describe(args: argparse.Namespace) -> int:
    from ki_vla.atomic import write_text_atomic
    from ki_vla.paths import require
    from ki_vla_ros.description import ros2_control_description

    try:
        params = dict(_key_value(p) for p in args.param)
        controllers = str(require(args.controllers)) if args.hardware == "gazebo" else None
        text = ros2_control_description(require(args.urdf).read_text(), args.hardware, plugin=args.plugin,
                                        params=params, controllers_file=controllers)
    except (FileNotFoundError, ValueError) as exc:
        print(f"ki-vla-ros describe: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_text_atomic(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--param wants KEY=VALUE, got {text!r}")
    return key.strip(), value


class Supervisor:
    """Starts the processes, watches them, and stops all of them on Ctrl-C, SIGTERM or any child's exit."""

    def __init__(self, plan: GraphPlan) -> None:
        self.plan = plan
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._stop = False

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def run(self, duration: float = 0.0) -> int:
        old_int = signal.signal(signal.SIGINT, self._signal)
        old_term = signal.signal(signal.SIGTERM, self._signal)
        rc = 0
        try:
            for p in self.plan.processes:
                print(f"[ki-vla-ros] starting {p.name}: {p.describe()}", flush=True)
                # Own process group: the terminal's Ctrl-C reaches only us, and we stop children in order.
                # die_with_parent: if we are killed outright, the nodes still stop.
                self.procs.append((p.name, subprocess.Popen(p.argv, env=graph_env(p.name), start_new_session=True,
                                                            preexec_fn=procs.die_with_parent)))
            deadline = time.monotonic() + duration if duration > 0 else None
            while not self._stop:
                for name, proc in self.procs:
                    code = proc.poll()
                    if code is not None:
                        print(f"[ki-vla-ros] {name} exited with code {code}; stopping the graph", flush=True)
                        rc = code or 1
                        self._stop = True
                        break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        finally:
            self.stop_all()
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            for f in self.plan.temp_files:
                f.unlink(missing_ok=True)
        return rc

    def stop_all(self) -> None:
        """SIGINT (rclpy shuts down cleanly), then SIGTERM, then SIGKILL for anything still running."""
        for sig, grace in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = [(n, p) for n, p in self.procs if p.poll() is None]
            if not alive:
                break
            for name, p in alive:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + grace
            while time.monotonic() < end and any(p.poll() is None for _, p in alive):
                time.sleep(0.05)
        for name, p in self.procs:
            print(f"[ki-vla-ros] {name} stopped (code {p.poll()})", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "describe":
        return _describe(args)
    if args.command == "say":
        from ki_vla_ros.say import say

        code, message = say(args.text, args.topic, args.wait)
        print(f"ki-vla-ros say: {'error: ' if code == 2 else ''}{message}", file=sys.stderr if code else sys.stdout)
        return code
    if args.command == "status":
        from ki_vla_ros.status import format_status, graph_status, status_json

        try:
            st = graph_status(args.window, args.discovery)
        except ValueError as exc:
            print(f"ki-vla-ros status: error: {exc}", file=sys.stderr)
            return 2
        print(status_json(st) if args.json else format_status(st))
        return 0 if st.nodes else 1
    try:
        plan = build_plan(args.config, model=args.model, device=args.device, sim=args.sim,
                          use_sim_time=args.use_sim_time)
    except (FileNotFoundError, ValueError) as exc:
        print(f"ki-vla-ros up: error: {exc}", file=sys.stderr)
        return 2
    for note in plan.notes:
        print(f"[ki-vla-ros] note: {note}", flush=True)
    if args.dry_run:
        for p in plan.processes:
            print(p.describe())
        for f in plan.temp_files:
            f.unlink(missing_ok=True)
        return 0
    return Supervisor(plan).run(args.duration)


if __name__ == "__main__":
    sys.exit(main())
