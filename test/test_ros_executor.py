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

"""executor_node over real DDS: control rate, joint and velocity limits under adversarial chunks, hold on
stale input and resumption without a jump, per-arm JointTrajectoryController messages, diagnostics."""
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from ki_vla.control.safety import JointLimits
from ki_vla.joints import GRIPPER_INDICES, JOINT_NAMES, LEFT_JOINTS, NUM_JOINTS, RIGHT_JOINTS
from ki_vla_ros.config import ExecutorNodeConfig
from ki_vla_ros.executor_node import ExecutorNode
from ki_vla_ros.msgs import chunk_to_trajectory, make_joint_state
from ki_vla_ros.ros_util import RELIABLE_QOS, duration_to_sec, now_sec
from ki_vla_ros.testing import Collector, ros_harness, wait_for

URDF = Path(__file__).resolve().parents[1] / "urdf" / "aloha_vx300s.urdf"
LIMITS = JointLimits.from_urdf(URDF, JOINT_NAMES)
DT = 0.02


def home():
    q = np.zeros(NUM_JOINTS)
    q[list(GRIPPER_INDICES)] = 0.5
    return q


def commands(col_left, col_right):
    """Pair left/right messages by arrival order -> (N, lookahead, 14) positions."""
    n = min(len(col_left), len(col_right))
    out = []
    for left_msg, r in zip(col_left.msgs[:n], col_right.msgs[:n]):
        q = np.zeros((len(left_msg.points), NUM_JOINTS))
        for k, (pl, pr) in enumerate(zip(left_msg.points, r.points)):
            q[k, :7], q[k, 7:] = pl.positions, pr.positions
        out.append(q)
    return np.array(out)


def check_jtc_message(msg, names):
    assert list(msg.joint_names) == list(names)
    assert msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 0     # start now
    times = [duration_to_sec(p.time_from_start) for p in msg.points]
    assert times[0] > 0 and all(b > a for a, b in zip(times, times[1:]))
    assert all(len(p.positions) == 7 for p in msg.points)
    if len(msg.points) >= 2:   # look-ahead: the path's velocities for JTC's splines, at rest on the last point
        pos = np.array([p.positions for p in msg.points])
        vel = np.array([p.velocities for p in msg.points])
        np.testing.assert_allclose(vel[:-1], np.gradient(pos, times[1] - times[0], axis=0)[:-1], atol=1e-6)
        assert np.all(vel[-1] == 0.0)


def executor_rig(h, name: str, **params):
    """An executor under test plus a test node with its command/diagnostics collectors and input publishers."""
    ex = h.add(ExecutorNode(context=h.context, parameter_overrides=[
        Parameter("urdf_path", value=str(URDF)), *(Parameter(k, value=v) for k, v in params.items())]))
    test = h.node(name)
    left = Collector(test, JointTrajectory, "/left_arm_controller/joint_trajectory", RELIABLE_QOS)
    right = Collector(test, JointTrajectory, "/right_arm_controller/joint_trajectory", RELIABLE_QOS)
    diags = Collector(test, DiagnosticArray, "/diagnostics", RELIABLE_QOS)
    js_pub = test.create_publisher(JointState, "/joint_states", RELIABLE_QOS)
    chunk_pub = test.create_publisher(JointTrajectory, "/ki_vla/action_chunk", RELIABLE_QOS)
    return ex, test, left, right, diags, js_pub, chunk_pub


def test_executor_rate_limits_hold_and_resume():
    with ros_harness() as h:
        ex, test, left, right, diags, js_pub, chunk_pub = executor_rig(
            h, "executor_test", chunk_timeout=0.3, lookahead_points=3, diagnostics_period=0.25)
        # A broken joint_states message first: ignored with a log line, the node keeps running.
        js_pub.publish(JointState(name=["left_waist"], position=[0.0, 1.0]))
        # A robot that tracks perfectly: it reports the last command (so the path tolerance is never exceeded).
        test.create_timer(DT, lambda: js_pub.publish(make_joint_state(
            JOINT_NAMES, home() if ex.core.last_command is None else ex.core.last_command, now_sec(test))))
        assert wait_for(lambda: len(left) > 10 and len(right) > 10, 10.0), "executor never commanded"
        q_cmd = commands(left, right)
        np.testing.assert_allclose(q_cmd[-1][0], home(), atol=1e-9)  # holding the measured position

        rng = np.random.default_rng(0)

        def send(kind: str, q0: np.ndarray) -> None:
            h_ = 50
            pos = np.repeat(q0[None], h_, axis=0)
            pos[:, 0] += 0.8 * np.sin(np.arange(h_) * DT * 3)          # fast but legal on left_waist
            pos[:, 8] += np.linspace(0, 0.3, h_)                        # right_shoulder ramp
            names = list(JOINT_NAMES)
            if kind == "nan":
                pos[5, 3] = np.nan
            elif kind == "jump":
                pos[20:, 2] += 1.5
            elif kind == "names":
                names[0] = "left_bogus"
            elif kind == "ragged":
                msg = chunk_to_trajectory(pos, names, now_sec(test), DT)
                msg.points[3].positions = msg.points[3].positions[:5]
                chunk_pub.publish(msg)
                return
            elif kind == "over_limit":
                pos[:, 1] = 3.0                                          # far past the shoulder limit
            elif kind == "near_limit":
                pos[:, 2] = LIMITS.upper[2] + 0.1                        # slightly out: clamped, not rejected
            elif kind == "reordered":
                perm = rng.permutation(NUM_JOINTS)
                names = [names[i] for i in perm]
                pos = pos[:, perm]
            chunk_pub.publish(chunk_to_trajectory(pos, names, now_sec(test) - 0.03, DT))

        left.clear(), right.clear()
        kinds = ["good", "nan", "reordered", "jump", "names", "good", "ragged", "over_limit", "near_limit", "good"]
        t_end = time.monotonic() + 2.0
        i = 0
        while time.monotonic() < t_end:
            send(kinds[i % len(kinds)], ex.core.last_command if ex.core.last_command is not None else home())
            i += 1
            time.sleep(0.1)
        active = commands(left, right)
        # Control rate: 2 s at 50 Hz (tolerant of a loaded 2-core machine, but not of a stalled timer).
        assert 80 <= len(active) <= 110, len(active)
        for m in left.msgs[-5:]:
            check_jtc_message(m, LEFT_JOINTS)
        for m in right.msgs[-5:]:
            check_jtc_message(m, RIGHT_JOINTS)
        assert np.all(active >= LIMITS.lower - 1e-9) and np.all(active <= LIMITS.upper + 1e-9)
        first = active[:, 0]
        steps = np.abs(np.diff(first, axis=0))
        assert np.all(steps <= LIMITS.velocity * DT + 1e-6)
        assert np.abs(first[:, 8] - home()[8]).max() > 0.05       # it did execute the good chunks
        assert first[:, 2].max() <= LIMITS.upper[2] + 1e-9

        # Stale input: no chunks -> once the last chunk (50 points, 1 s) has ended the command is held constant.
        time.sleep(1.2)
        left.clear(), right.clear()
        assert wait_for(lambda: len(left) > 10 and len(right) > 10, 15.0)
        held = commands(left, right)[:, 0]
        assert np.ptp(held, axis=0).max() < 1e-12
        assert ex.core.holding

        # Resume with a chunk well away from the held position: a ramp, no jump.
        left.clear(), right.clear()
        target = held[-1].copy()
        target[4] = np.clip(target[4] + 0.45, LIMITS.lower[4], LIMITS.upper[4])
        for _ in range(10):
            chunk_pub.publish(chunk_to_trajectory(np.repeat(target[None], 50, 0), JOINT_NAMES, now_sec(test), DT))
            time.sleep(0.05)
        resumed = commands(left, right)[:, 0]
        seq = np.vstack([held[-1:], resumed])
        assert np.all(np.abs(np.diff(seq, axis=0)) <= LIMITS.velocity * DT + 1e-6)
        assert abs(resumed[-1, 4] - target[4]) < 1e-6

        def report():
            for d in reversed(diags.msgs):
                for s in d.status:
                    if s.name == "executor_node: chunks":
                        return {v.key: v.value for v in s.values}
            return None

        assert wait_for(lambda: report() is not None and int(report()["rejected"]) >= 5, 15.0), report()
        kv = report()
        assert int(kv["accepted"]) >= 5
        for reason in ("nan", "jump", "names", "malformed", "limits"):
            assert int(kv.get(f"rejected[{reason}]", 0)) >= 1, (reason, kv)
        assert float(kv["latency_ms_p50"]) > 0


def test_executor_holds_on_silent_joint_states_and_re_anchors_to_a_moved_robot():
    """JTC-like state watching over DDS: /joint_states silent -> hold within state_timeout, said on /diagnostics;
    the robot back 0.4 rad away from the command (e-stop release, a sim reset) -> command where it is."""
    with ros_harness() as h:
        ex, test, left, right, diags, js_pub, chunk_pub = executor_rig(
            h, "executor_state_test", chunk_timeout=5.0, state_timeout=0.1, diagnostics_period=0.2)
        robot = {"q": home(), "on": True}
        test.create_timer(DT, lambda: robot["on"] and js_pub.publish(make_joint_state(JOINT_NAMES, robot["q"],
                                                                                      now_sec(test))))

        def control():
            for d in reversed(diags.msgs):
                for s in d.status:
                    if s.name == "executor_node: control":
                        return s.message, {v.key: v.value for v in s.values}
            return None, {}

        assert wait_for(lambda: ex.core.last_command is not None, 10.0)
        chunk_pub.publish(chunk_to_trajectory(np.repeat(home()[None], 500, 0), JOINT_NAMES, now_sec(test), DT))
        assert wait_for(lambda: not ex.core.holding, 10.0), "the chunk was never executed"

        robot["on"] = False  # the driver dies
        assert wait_for(lambda: ex.core.hold_reason == "stale_state", 5.0)
        assert wait_for(lambda: "silent" in (control()[0] or ""), 5.0), control()
        left.clear(), right.clear()
        assert wait_for(lambda: len(left) > 5 and len(right) > 5, 5.0)
        held = commands(left, right)[:, 0]
        assert np.ptp(held, axis=0).max() < 1e-12
        # The next report counts them (one taken during a late /joint_states burst may say "silent" before any hold).
        assert wait_for(lambda: int(control()[1].get("hold_ticks[stale_state]", 0)) > 0, 5.0), control()

        moved = home()
        moved[2] += 0.4  # the driver comes back with the arm elsewhere
        robot["q"], robot["on"] = moved, True
        assert wait_for(lambda: ex.core.path_violations >= 1, 5.0)
        assert wait_for(lambda: int(control()[1].get("path_violations", 0)) >= 1, 5.0), control()
        left.clear(), right.clear()
        assert wait_for(lambda: len(left) > 5 and len(right) > 5, 5.0)
        # where the robot is, not the old pose
        np.testing.assert_allclose(commands(left, right)[-1][0], moved, atol=1e-9)
        # A chunk built around the real position is accepted and executed.
        chunk_pub.publish(chunk_to_trajectory(np.repeat(moved[None], 500, 0), JOINT_NAMES, now_sec(test), DT))
        assert wait_for(lambda: not ex.core.holding, 5.0)


def test_diagnostics_say_why_a_sim_time_graph_without_clock_is_silent():
    """use_sim_time and nobody publishing /clock: no control tick ever fires; /diagnostics (on the steady clock)
    still reports, and says what is wrong."""
    with ros_harness() as h:
        h.add(ExecutorNode(context=h.context, parameter_overrides=[
            Parameter("urdf_path", value=str(URDF)), Parameter("use_sim_time", value=True),
            Parameter("diagnostics_period", value=0.2)]))
        test = h.node("executor_clock_test")
        diags = Collector(test, DiagnosticArray, "/diagnostics", RELIABLE_QOS)

        def message():
            for d in reversed(diags.msgs):
                for s in d.status:
                    if s.name == "executor_node: control":
                        return s.message
            return ""

        assert wait_for(lambda: "/clock" in message(), 10.0), message()
        assert "not ticking" in message()


def _param_client(h, node_name):
    from rcl_interfaces.srv import SetParameters

    client = h.node(f"param_client_{node_name}").create_client(SetParameters, f"/{node_name}/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0)

    def set_param(name, value):
        future = client.call_async(SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()]))
        assert wait_for(future.done, 10.0)
        return future.result().results[0]
    return set_param


def test_live_parameters_apply_or_are_refused_never_silently_ignored():
    """velocity_scale applies live; the others are refused with the reason while configured (`ros2 param set
    /executor_node chunk_timeout 1.0` over the real parameter service must fail and say how, never report success
    and change nothing); the start-up ones are read-only; an out-of-range value or a wrong type is refused."""
    with ros_harness() as h:
        ex = h.add(ExecutorNode(context=h.context, parameter_overrides=[Parameter("urdf_path", value=str(URDF))]))
        set_param = _param_client(h, "executor_node")
        full = ex.core.limits.velocity.copy()
        result = set_param("chunk_timeout", 1.0)
        assert not result.successful and "cleanup" in result.reason and "configure" in result.reason
        assert ex.get_parameter("chunk_timeout").value == 0.5 and ex.core.chunk_timeout == 0.5
        assert "configure" in ex.describe_parameter("chunk_timeout").description
        assert not set_param("diagnostics_period", 0.1).successful
        assert "restart" in ex.describe_parameter("diagnostics_period").description
        assert set_param("velocity_scale", 0.2).successful
        np.testing.assert_allclose(ex.core.limits.velocity, 0.2 * full)
        bad = set_param("velocity_scale", 3.0)              # outside the declared range: rclpy refuses it
        assert not bad.successful and "range" in bad.reason.lower(), bad.reason
        bad = set_param("velocity_scale", 0.0)              # in the range, refused by the node: (0, 1]
        assert not bad.successful and "(0, 1]" in bad.reason
        np.testing.assert_allclose(ex.core.limits.velocity, 0.2 * full)
        bad = set_param("velocity_scale", "fast")           # a wrong type is refused
        assert not bad.successful and "'fast'" in bad.reason, bad.reason
        assert set_param("velocity_scale", 1).successful    # an integer for a float, as `ros2 param set ... 1` sends
        np.testing.assert_allclose(ex.core.limits.velocity, full)
        d = ex.describe_parameter("control_hz")             # `ros2 param describe` shows the range
        assert d.floating_point_range[0].to_value == 1000.0 and d.integer_range[0].from_value == 1
        assert "in [1.0, 1000.0]" in d.additional_constraints


def test_parameter_ranges_hold_for_yaml_files_and_start_up_values_alike(tmp_path):
    """A value outside a parameter's range is one clear error wherever it comes from: a parameter file read without
    ROS, or the node's start-up value (an integer for a float parameter included, which rclpy's own range check
    skips)."""
    from rclpy.exceptions import ParameterException

    from ki_vla.configs import ConfigError
    from ki_vla_ros.config import load_node_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("executor_node:\n  ros__parameters:\n    chunk_timeout: -1.0\n")
    with pytest.raises(ConfigError, match=r"chunk_timeout.*outside its range \[0.0, 60.0\]"):
        load_node_config(ExecutorNodeConfig, bad, "executor_node")
    with ros_harness() as h:
        for value in (5000.0, 5000):
            with pytest.raises((ValueError, ParameterException), match="control_hz|range"):
                ExecutorNode(context=h.context, parameter_overrides=[Parameter("urdf_path", value=str(URDF)),
                                                                     Parameter("control_hz", value=value)])


def test_cleanup_set_configure_rereads_parameters_and_a_bad_value_fails_the_transition():
    """ros2_controllers' way: parameters are read in on_configure. Unconfigured, the executor has no topics (it
    cannot command); a bad value fails configure with the reason logged and leaves it unconfigured; fixed, the next
    configure uses the new values (topic and timeout), and the old command topic is released."""
    from lifecycle_msgs.srv import GetState
    from rclpy.lifecycle import TransitionCallbackReturn

    with ros_harness() as h:
        ex, test, left, right, diags, js_pub, chunk_pub = executor_rig(h, "executor_reconfigure_test")
        set_param = _param_client(h, "executor_node")
        get_state = test.create_client(GetState, "/executor_node/get_state")
        assert get_state.wait_for_service(timeout_sec=10.0)

        def state():
            future = get_state.call_async(GetState.Request())
            assert wait_for(future.done, 10.0)
            return future.result().current_state.label

        test.create_timer(DT, lambda: js_pub.publish(make_joint_state(JOINT_NAMES, home(), now_sec(test))))
        assert wait_for(lambda: len(left) > 5, 10.0)
        assert ex.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert ex.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert state() == "unconfigured" and ex.core is None
        assert wait_for(lambda: test.count_subscribers("/joint_states") == 0, 5.0)
        assert not set_param("control_hz", -5.0).successful        # outside its declared range: refused at once
        assert set_param("urdf_path", "/nonexistent/robot.urdf").successful   # accepted while unconfigured...
        assert ex.trigger_configure() == TransitionCallbackReturn.FAILURE   # ...and refused by configure
        assert state() == "unconfigured" and ex.core is None
        assert "robot.urdf" in ex._configure_error
        assert set_param("urdf_path", str(URDF)).successful
        moved = Collector(test, JointTrajectory, "/left_arm/joint_trajectory", RELIABLE_QOS)
        assert set_param("control_hz", 50.0).successful
        assert set_param("chunk_timeout", 1.5).successful
        assert set_param("command_topics",
                         ["/left_arm/joint_trajectory", "right_arm_controller/joint_trajectory"]).successful
        assert ex.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert ex.core.chunk_timeout == 1.5
        assert ex.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert state() == "active"
        n = len(left)
        assert wait_for(lambda: len(moved) > 5, 10.0), "not commanding on the new topic"
        time.sleep(0.2)
        assert len(left) == n, "still commanding on the old topic"


def test_lifecycle_active_means_may_command_and_deactivate_holds_at_once():
    from rclpy.lifecycle import TransitionCallbackReturn

    with ros_harness() as h:
        ex, test, left, right, diags, js_pub, chunk_pub = executor_rig(h, "executor_lifecycle_test", autostart=False)
        measured = {"q": home()}
        test.create_timer(DT, lambda: js_pub.publish(make_joint_state(JOINT_NAMES, measured["q"], now_sec(test))))
        time.sleep(0.6)
        assert len(left) == 0 and not ex.active  # unconfigured: never commands, whatever arrives
        assert ex.trigger_configure() == TransitionCallbackReturn.SUCCESS and len(left) == 0
        assert ex.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert wait_for(lambda: len(left) > 5, 5.0), "active but not commanding"
        q = home()
        pos = np.repeat(q[None], 50, axis=0)
        pos[:, 0] += np.linspace(0.0, 0.4, 50)   # a slow ramp on left_waist
        chunk_pub.publish(chunk_to_trajectory(pos, list(JOINT_NAMES), now_sec(test), DT))
        assert wait_for(lambda: ex.core.last_command is not None and ex.core.last_command[0] > 0.05, 5.0)
        measured["q"] = ex.core.last_command.copy()
        before = ex.core.last_command.copy()
        assert ex.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        time.sleep(0.3)   # the hold command in flight
        n = len(left)
        time.sleep(0.5)
        assert len(left) == n, "commands after deactivate"
        np.testing.assert_allclose(commands(left, right)[-1][0], before, atol=1e-9)  # held where it was, not home
        measured["q"] = home()   # moved by hand while inactive
        time.sleep(0.2)
        assert ex.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert wait_for(lambda: len(left) > n + 3, 5.0)
        np.testing.assert_allclose(commands(left, right)[-1][0], home(), atol=1e-6)  # restarts from the measured pose


def test_topics_are_relative_so_a_namespace_separates_two_robots():
    """`PushRosNamespace` / `__ns:=/robot1`: the default topic names are relative, so a namespaced executor reads
    /robot1/joint_states and commands /robot1/left_arm_controller/... (an absolute default would ignore the
    namespace)."""
    with ros_harness() as h:
        h.add(ExecutorNode(context=h.context, namespace="robot1",
                           parameter_overrides=[Parameter("urdf_path", value=str(URDF))]))
        test = h.node("namespace_test")
        mine = Collector(test, JointTrajectory, "/robot1/left_arm_controller/joint_trajectory", RELIABLE_QOS)
        root = Collector(test, JointTrajectory, "/left_arm_controller/joint_trajectory", RELIABLE_QOS)
        pub = test.create_publisher(JointState, "/robot1/joint_states", RELIABLE_QOS)
        test.create_timer(DT, lambda: pub.publish(make_joint_state(JOINT_NAMES, home(), now_sec(test))))
        assert wait_for(lambda: len(mine) > 5, 10.0)
        assert len(root) == 0


def test_status_shows_nodes_lifecycle_rates_and_diagnostics():
    """`ki-vla-ros status` from another process: the executor, its lifecycle state, the /joint_states rate the test
    publishes (50 Hz, counted within a wide band: the suite runs on loaded CI machines) and its diagnostics."""
    import json
    import os
    import subprocess
    import sys

    domain = 73   # its own DDS domain: nodes of the earlier tests in this process must not be in the graph it reads
    with ros_harness(domain_id=domain) as h:
        ex, test, left, right, diags, js_pub, chunk_pub = executor_rig(h, "executor_status_test",
                                                                       diagnostics_period=0.2)
        test.create_timer(DT, lambda: js_pub.publish(make_joint_state(JOINT_NAMES, home(), now_sec(test))))
        res = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "status", "--json", "--window", "2",
                              "--discovery", "3"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "ROS_DOMAIN_ID": str(domain)})
        assert res.returncode == 0, res.stderr
        st = json.loads(res.stdout)
        nodes = {n["name"]: n for n in st["nodes"]}
        assert set(nodes) == {"/executor_node", "/executor_status_test"}, nodes
        assert nodes["/executor_node"]["lifecycle"] == "active"
        assert any(d["name"] == "executor_node: control" for d in nodes["/executor_node"]["diagnostics"])
        topics = {t["name"]: t for t in st["topics"]}
        js = topics["/joint_states"]
        assert js["publishers"] == 1 and 10.0 < js["rate_hz"] < 80.0, js
        assert topics["/left_arm_controller/joint_trajectory"]["publishers"] == 1
        table = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "status", "--window", "0.5"],
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, "ROS_DOMAIN_ID": str(domain)})
        assert "/executor_node" in table.stdout and "Hz" in table.stdout
    bad = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "status", "--window", "0"],
                         capture_output=True, text=True, timeout=60, env=os.environ)
    assert bad.returncode == 2 and "window" in bad.stderr


def test_joint_states_of_two_namespaces_join_into_one_fresh_vector():
    """Per-arm ros2_control stacks publish follower_left/joint_states and follower_right/joint_states with the same
    unprefixed names: the joiner fills each arm's joints from its own topic, and returns nothing until both are fresh
    (one silent arm must read as missing state, never as that arm standing still)."""
    from ki_vla.joints import state_sources
    from ki_vla_ros.msgs import JointStateJoiner

    arm = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "left_finger"]
    sources = state_sources([f"follower_left/{j}" for j in arm] + [f"follower_right/{j}" for j in arm])
    assert [ns for ns, _, _ in sources] == ["follower_left", "follower_right"]
    joiner = JointStateJoiner(sources, timeout=0.1)
    left, right = np.arange(7.0), 10 + np.arange(7.0)
    assert joiner.update(0, make_joint_state(arm[::-1], left[::-1], 1.0), now=0.0) is None   # right never seen
    q, stamp = joiner.update(1, make_joint_state(arm, right, 2.0), now=0.05)
    np.testing.assert_array_equal(q, np.concatenate([left, right]))
    assert stamp == 1.0                                                         # the older source's stamp
    assert joiner.update(1, make_joint_state(arm, right, 3.0), now=0.2) is None  # left is 0.2 s old now
    with pytest.raises(ValueError, match="lacks"):
        joiner.update(0, make_joint_state(arm[:6], left[:6], 3.0), now=0.2)
    rejected = []   # what a node's callback uses: the invalid message is reported, the node goes on
    assert joiner.offer(0, make_joint_state(arm[:6], left[:6], 3.0), 0.2,
                        lambda i, e: rejected.append((i, str(e)))) is None
    assert rejected and rejected[0][0] == 0 and "lacks" in rejected[0][1]
    with pytest.raises(ValueError, match="unique"):
        state_sources(["follower_left/waist"] * 14)
