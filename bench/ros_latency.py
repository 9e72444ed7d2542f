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

"""Camera-to-command latency and executor period jitter of the running node graph (issue 4's closing numbers).

    .venv/bin/python bench/ros_latency.py [--duration 60] [--model config/model/tiny.yaml] [--json out.json]

Starts the graph with `ki-vla-ros up` (one process per node, as deployed) from config/bimanual.yaml with
the policy on --device, and plays a synthetic robot: 3 cameras (bgr8 frames at --camera-hz) and
/joint_states published together with one stamp per tick, as a sim or a synchronized driver does, so the
observation's stamp is the camera stamp. Reported:
  * camera_to_command_ms: camera stamp -> the executor's first command that uses the chunk computed from
    that frame (measured by executor_node at publish time; its /diagnostics window);
  * camera_to_chunk_ms: camera stamp -> chunk received here (every chunk, raw samples);
  * executor period p50/p99 and |period - 20 ms| p99 over the run (executor_node's own timer, wall clock);
  * command inter-arrival p50/p99 seen by a subscriber in another process (adds DDS delivery jitter).
The random model's chunks are noise, so the executor's rejection thresholds are relaxed for the run (its
clamp and velocity limit still apply); the policy's age limits are widened to the CPU inference time.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ki_vla.data.images import rgb_to_raw  # noqa: E402
from ki_vla.joints import CAMERA_NAMES  # noqa: E402
from ki_vla.joints import GRIPPER_INDICES, JOINT_NAMES  # noqa: E402
from ki_vla_ros.ros_util import RELIABLE_QOS, now_sec, to_sec, to_time_msg  # noqa: E402
from ki_vla_ros.testing import Collector, ros_harness, wait_for  # noqa: E402

CAMS = CAMERA_NAMES


def bench_config(args: argparse.Namespace, out: Path) -> Path:
    cfg = yaml.safe_load((ROOT / args.config).read_text())
    cfg["policy_node"]["ros__parameters"].update(device=args.device, max_image_age=args.max_age,
                                                 max_state_age=args.max_age, torch_threads=args.torch_threads)
    cfg["executor_node"]["ros__parameters"].update(max_start_deviation=100.0, jump_velocity_factor=1e6,
                                                   limit_tolerance=100.0, chunk_timeout=2.0,
                                                   realtime_priority=args.realtime_priority)
    for section in cfg.values():
        section["ros__parameters"]["diagnostics_period"] = 1.0
    out.write_text(yaml.safe_dump(cfg))
    return out


def last_status(diags: Collector, name: str) -> dict[str, str]:
    for d in reversed(diags.msgs):
        for s in d.status:
            if s.name == name:
                return {v.key: v.value for v in s.values}
    return {}


def pct(x: list[float] | np.ndarray, qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in qs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds (after warm-up)")
    p.add_argument("--config", default="config/bimanual.yaml")
    p.add_argument("--model", default="config/model/tiny.yaml")
    p.add_argument("--device", default="cpu")
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--realtime-priority", type=int, default=0, help="executor SCHED_FIFO priority (0 = off)")
    p.add_argument("--camera-hz", type=float, default=25.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--max-age", type=float, default=1.0, help="policy max_image_age / max_state_age (s)")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))

    tmp = Path(tempfile.mkdtemp(prefix="ki_vla_bench_"))
    config = bench_config(args, tmp / "bench.yaml")
    up = subprocess.Popen([sys.executable, "-m", "ki_vla_ros.cli", "up", "--config", str(config), "--model",
                           args.model, "--duration", str(args.duration + 300)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    result: dict[str, object] = {}
    try:
        with ros_harness() as h:
            node = h.node("ros_latency_bench")
            cams = {c: node.create_publisher(Image, f"/{c}/image_raw", RELIABLE_QOS) for c in CAMS}
            js = node.create_publisher(JointState, "/joint_states", RELIABLE_QOS)
            instr = node.create_publisher(String, "/instruction", RELIABLE_QOS)
            left = Collector(node, JointTrajectory, "/left_arm_controller/joint_trajectory", RELIABLE_QOS)
            chunks = Collector(node, JointTrajectory, "/ki_vla/action_chunk", RELIABLE_QOS)
            diags = Collector(node, DiagnosticArray, "/diagnostics", RELIABLE_QOS)
            rgb = np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
            data, step = rgb_to_raw(rgb, "bgr8")
            home = np.zeros(14)
            home[list(GRIPPER_INDICES)] = 0.5

            def tick() -> None:
                t = now_sec(node)
                header = Header(stamp=to_time_msg(t))
                for c, pub in cams.items():
                    pub.publish(Image(header=header, height=args.height, width=args.width, encoding="bgr8",
                                      step=step, data=data))
                js.publish(JointState(header=header, name=list(JOINT_NAMES), position=home.tolist()))

            node.create_timer(1.0 / args.camera_hz, tick)
            node.create_timer(0.5, lambda: instr.publish(String(data="transfer the cube")))
            print("waiting for the graph (model load + warm-up)...", flush=True)
            if not wait_for(lambda: int(last_status(diags, "executor_node: chunks").get("accepted", 0)) >= 3, 180.0):
                print("graph never produced executed chunks", file=sys.stderr)
                return 1
            print(f"measuring for {args.duration:.0f} s...", flush=True)
            left.clear(), chunks.clear()
            t_start = time.monotonic()
            t_end = t_start + args.duration
            while time.monotonic() < t_end:
                time.sleep(0.5)
            time.sleep(1.5)  # one more diagnostics report covering the window
            window = time.monotonic() - t_start
            arrivals = np.array([t for t, _ in left.items])
            # camera stamp -> chunk arrival here: receive wall time minus stamp (both ROS time = wall here).
            wall_minus_mono = time.time() - time.monotonic()
            chunk_lat = [((t + wall_minus_mono) - to_sec(m.header.stamp)) * 1e3 for t, m in chunks.items]
            ex = last_status(diags, "executor_node: control")
            exc = last_status(diags, "executor_node: chunks")
            pol = last_status(diags, "policy_node: policy")
            cam = last_status(diags, "camera_node: camera cam_high")
            inter = np.diff(arrivals) * 1e3
            result = {
                "device": args.device, "model": args.model, "duration_s": args.duration,
                "torch_threads": args.torch_threads, "executor_realtime_priority": args.realtime_priority,
                "camera": f"{len(CAMS)} x {args.width}x{args.height} bgr8 @ {args.camera_hz:g} Hz",
                "chunks_per_s": round(len(chunks) / window, 2),
                "camera_to_command_ms": {k[len("latency_ms_"):]: float(v) for k, v in exc.items()
                                         if k.startswith("latency_ms_")},
                "camera_to_chunk_ms": pct(chunk_lat),
                "policy_inference_ms": {k[len("inference_ms_"):]: float(v) for k, v in pol.items()
                                        if k.startswith("inference_ms_")},
                "camera_node_process_ms": {k[len("process_ms_"):]: float(v) for k, v in cam.items()
                                           if k.startswith("process_ms_")},
                "executor_period_ms": {k[len("period_ms_"):]: float(v) for k, v in ex.items()
                                       if k.startswith("period_ms_")},
                "executor_jitter_ms_p99": float(ex.get("jitter_ms_p99", "nan")),
                "command_interarrival_ms": pct(inter, (1, 50, 99)),
                "commands_per_s": round(len(arrivals) / window, 2),
            }
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
