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

"""The whole graph across processes, started by `ki-vla-ros up`: camera frames, joint states and an
instruction in; chunks flow camera_node -> policy_node -> executor_node; per-arm commands come out at the
control rate within limits (the tiny model's random chunks are noise: the executor must clamp and
rate-limit them); Ctrl-C stops every process cleanly."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header, String
from trajectory_msgs.msg import JointTrajectory

from ki_vla.data.images import rgb_to_raw
from ki_vla.control.safety import JointLimits
from ki_vla.joints import GRIPPER_INDICES, JOINT_NAMES
from ki_vla_ros.msgs import make_joint_state
from ki_vla_ros.ros_util import RELIABLE_QOS, now_sec, to_time_msg
from ki_vla_ros.testing import Collector, ros_harness, wait_for

ROOT = Path(__file__).resolve().parents[1]
CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
LIMITS = JointLimits.from_urdf(ROOT / "urdf" / "aloha_vx300s.urdf", JOINT_NAMES)


def graph_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "bimanual.yaml").read_text())
    cfg["camera_node"]["ros__parameters"].update(image_size=32, transport="raw")
    # Real-time chunking on: each chunk is guided toward the plan the executor publishes (the wiring under test).
    cfg["policy_node"]["ros__parameters"].update(device="cpu", max_image_age=1.0, max_state_age=1.0, torch_threads=1,
                                                 rtc_beta=5.0)
    # Accept the random model's chunks so the path camera -> command is exercised end to end; the clamp
    # and velocity limit (not the rejection thresholds) then keep the commands safe.
    cfg["executor_node"]["ros__parameters"].update(max_start_deviation=100.0, jump_velocity_factor=1e6,
                                                   limit_tolerance=100.0, gripper_limit_tolerance=100.0,
                                                   chunk_timeout=2.0,
                                                   path_tolerance=[0.0] * 14)  # our joint states stay at home
    for section in cfg.values():
        section["ros__parameters"]["diagnostics_period"] = 0.5
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def status(diags, name):
    for d in reversed(diags.msgs):
        for s in d.status:
            if s.name == name:
                return {v.key: v.value for v in s.values}
    return {}


def test_graph_across_processes(tmp_path):
    config = graph_config(tmp_path)
    up = subprocess.Popen([sys.executable, "-m", "ki_vla_ros.cli", "up", "--config", str(config), "--duration", "120"],
                          cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with ros_harness() as h:
            test = h.node("graph_test")
            left = Collector(test, JointTrajectory, "/left_arm_controller/joint_trajectory", RELIABLE_QOS)
            right = Collector(test, JointTrajectory, "/right_arm_controller/joint_trajectory", RELIABLE_QOS)
            diags = Collector(test, DiagnosticArray, "/diagnostics", RELIABLE_QOS)
            plans = Collector(test, JointTrajectory, "/ki_vla/executor_plan", RELIABLE_QOS)
            cams = {c: test.create_publisher(Image, f"/{c}/image_raw", RELIABLE_QOS) for c in CAMS}
            js = test.create_publisher(JointState, "/joint_states", RELIABLE_QOS)
            instr = test.create_publisher(String, "/instruction", RELIABLE_QOS)
            home = np.zeros(14)
            home[list(GRIPPER_INDICES)] = 0.5
            rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
            data, step = rgb_to_raw(rgb, "bgr8")

            def feed_cameras():
                header = Header(stamp=to_time_msg(now_sec(test)))
                for c, p in cams.items():
                    p.publish(Image(header=header, height=120, width=160, encoding="bgr8", step=step, data=data))

            test.create_timer(0.1, feed_cameras)
            test.create_timer(0.02, lambda: js.publish(make_joint_state(JOINT_NAMES, home, now_sec(test))))
            test.create_timer(0.5, lambda: instr.publish(String(data="transfer the cube")))

            def chunks_executed():
                kv = status(diags, "executor_node: chunks")
                return int(kv.get("accepted", 0)) >= 2

            assert wait_for(chunks_executed, 60.0), (status(diags, "policy_node: policy"),
                                                     status(diags, "executor_node: chunks"))
            assert status(diags, "camera_node: camera cam_high").get("rate_hz") not in (None, "0")
            left.clear(), right.clear()
            time.sleep(2.0)
            n = min(len(left), len(right))
            assert 70 <= n <= 110, n                  # 50 Hz across processes, on a loaded 2-core machine
            q = np.array([list(left_msg.points[0].positions) + list(r.points[0].positions)
                          for left_msg, r in zip(left.msgs[:n], right.msgs[:n])])
            assert np.all(q >= LIMITS.lower - 1e-9) and np.all(q <= LIMITS.upper + 1e-9)
            assert np.all(np.abs(np.diff(q, axis=0)) <= LIMITS.velocity * 0.02 + 1e-6)
            kv = status(diags, "executor_node: chunks")
            assert float(kv["latency_ms_p50"]) > 0
            # The executor's plan after each chunk, in the policy's names, stamped with the chunk it includes; the
            # policy guided its chunks toward it, with a delay measured from its own latency.
            full = [m for m in plans.msgs if m.points]
            assert full and list(full[-1].joint_names) == list(JOINT_NAMES) and len(full[-1].points) >= 2
            assert wait_for(lambda: int(status(diags, "policy_node: policy").get("rtc_guided", 0)) >= 1, 10.0), \
                status(diags, "policy_node: policy")
            assert int(status(diags, "policy_node: policy")["rtc_delay_ticks"]) >= 1
    finally:
        up.send_signal(signal.SIGINT)                    # what Ctrl-C does
        try:
            out, _ = up.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            out, _ = up.communicate()
            raise AssertionError("ki-vla-ros up did not stop on SIGINT:\n" + out.decode()[-3000:])
    text = out.decode()
    assert up.returncode == 0, text[-3000:]
    for name in ("camera_node", "policy_node", "executor_node"):
        assert f"{name} stopped (code 0)" in text, text[-3000:]
