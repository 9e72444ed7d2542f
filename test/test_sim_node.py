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

"""sim_node over real rclpy/DDS: topics, JTC commands, lockstep determinism, reset, realtime pacing."""
from __future__ import annotations

import json

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Int64, String, UInt32  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ki_vla.joints import JOINT_NAMES, LEFT_JOINTS, RIGHT_JOINTS  # noqa: E402
from ki_vla_ros.msgs import command_trajectory  # noqa: E402
from ki_vla_ros.ros_util import RELIABLE_QOS  # noqa: E402
from ki_vla_ros.sim_node import SimNode  # noqa: E402
from ki_vla_ros.testing import Collector, ros_harness, wait_for  # noqa: E402

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
DT = 0.02


def _params(**kw):
    return [Parameter(k, value=v) for k, v in kw.items()]


def _status(col: Collector) -> dict:
    return json.loads(col.msgs[-1].data) if len(col) else {}


def test_lockstep_commands_reset_and_topics():
    with ros_harness() as h:
        sim = h.add(SimNode(context=h.context, parameter_overrides=_params(
            mode="lockstep", task="transfer_color", seed=2, target="blue", image_height=48, image_width=64,
            camera_hz=25.0, camera_names=["cam_high", "cam_left_wrist"], idle_republish_period=0.2)))
        t = h.node("sim_test")
        joints = Collector(t, JointState, "/joint_states", RELIABLE_QOS)
        images = Collector(t, Image, "/cam_high/image_raw", RELIABLE_QOS)
        clock = Collector(t, Clock, "/clock", RELIABLE_QOS)
        status = Collector(t, String, "/sim/status", RELIABLE_QOS)
        instr = Collector(t, String, "/sim/instruction", LATCHED)
        left = t.create_publisher(JointTrajectory, "/left_arm_controller/joint_trajectory", RELIABLE_QOS)
        right = t.create_publisher(JointTrajectory, "/right_arm_controller/joint_trajectory", RELIABLE_QOS)
        step = t.create_publisher(UInt32, "/sim/step", RELIABLE_QOS)
        reset = t.create_publisher(Int64, "/sim/reset", RELIABLE_QOS)

        # Idle republishing lets late subscribers see the initial observation.
        assert wait_for(lambda: len(joints) and len(images) and len(instr), 15.0)
        assert instr.msgs[-1].data == "transfer the blue cube"
        js = joints.msgs[-1]
        assert list(js.name) == list(JOINT_NAMES) and len(js.velocity) == 14
        home = np.array(js.position)
        img = images.msgs[-1]
        assert (img.height, img.width, img.encoding) == (48, 64, "rgb8")
        assert img.header.frame_id == "cam_high_optical_frame"
        assert wait_for(lambda: all(p.get_subscription_count() >= 1 for p in (left, right, step, reset)), 10.0)

        # Explicit steps: nothing moves by itself in lockstep.
        step.publish(UInt32(data=4))
        assert wait_for(lambda: _status(status).get("step") == 4, 10.0)
        assert _status(status)["clock"] == pytest.approx(4 * DT)
        assert wait_for(lambda: len(clock) and clock.msgs[-1].clock.nanosec == 80_000_000, 15.0)

        # Executor-style commands: one pair (left + right) per tick drives the sim one tick each.
        target = home[:7].copy()
        target[0] += 0.3
        ramp = np.linspace(home[:7], target, 26)[1:]
        for k in range(25):
            left.publish(command_trajectory(LEFT_JOINTS, ramp[k:k + 1], DT))
            right.publish(command_trajectory(RIGHT_JOINTS, home[7:][None], DT))
            assert wait_for(lambda: _status(status).get("step") == 5 + k, 10.0), _status(status)
        for k in range(20):  # hold the last point a little longer
            left.publish(command_trajectory(LEFT_JOINTS, ramp[-1:], DT))
            right.publish(command_trajectory(RIGHT_JOINTS, home[7:][None], DT))
            assert wait_for(lambda: _status(status).get("step") == 30 + k, 10.0), _status(status)
        for _ in range(8):  # a burst (within the publishers' history depth) is paired in arrival order
            left.publish(command_trajectory(LEFT_JOINTS, ramp[-1:], DT))
            right.publish(command_trajectory(RIGHT_JOINTS, home[7:][None], DT))
        assert wait_for(lambda: _status(status).get("step") == 57, 10.0), (_status(status), sim.ticks)
        assert wait_for(lambda: joints.msgs[-1].header.stamp.nanosec == 140_000_000, 15.0)  # 57 * 0.02 = 1.14
        q = np.array(joints.msgs[-1].position)
        assert abs(q[0] - target[0]) < 0.03 and abs(q[7] - home[7]) < 0.01
        st = _status(status)
        assert st["instruction"] == "transfer the blue cube" and st["success"] is False

        # A malformed command is rejected, logged and counted; the arm keeps its setpoint, the sim goes on.
        left.publish(command_trajectory(("left_waist", "bogus"), np.zeros((1, 2)), DT))
        right.publish(command_trajectory(RIGHT_JOINTS, home[7:][None], DT))
        assert wait_for(lambda: sim.rejected == 1 and _status(status).get("step") == 58, 15.0)

        # Reset: new seed, step 0, the clock keeps running, instruction re-latched.
        reset.publish(Int64(data=5))
        assert wait_for(lambda: _status(status).get("seed") == 5 and _status(status).get("step") == 0, 10.0)
        step.publish(UInt32(data=1))
        assert wait_for(lambda: _status(status).get("seed") == 5 and _status(status).get("step") == 1, 10.0)
        assert _status(status)["clock"] == pytest.approx(59 * DT)


def test_scripted_episode_through_ros_matches_direct_run():
    """The scripted plan sent as executor-style arm commands in lockstep reproduces the direct run
    exactly (same seed, same physics) and /sim/status reports the success."""
    from ki_vla.sim.scenes import BimanualSim
    from ki_vla.sim.scripted import ScriptedPolicy, run_scripted_episode

    env = BimanualSim("transfer_cube", seed=3, cameras=())
    direct = run_scripted_episode(env, ScriptedPolicy("transfer_cube"), 3, render=False)
    assert direct["success"]
    plan, final_direct = direct["actions"], env.state()
    with ros_harness() as h:
        sim = h.add(SimNode(context=h.context, parameter_overrides=_params(
            mode="lockstep", task="transfer_cube", seed=3, camera_hz=0.0, reset_settle=0.0)))  # every command counts
        t = h.node("sim_scripted_test")
        status = Collector(t, String, "/sim/status", RELIABLE_QOS)
        left = t.create_publisher(JointTrajectory, "/left_arm_controller/joint_trajectory", RELIABLE_QOS)
        right = t.create_publisher(JointTrajectory, "/right_arm_controller/joint_trajectory", RELIABLE_QOS)
        assert wait_for(lambda: left.get_subscription_count() >= 1 and right.get_subscription_count() >= 1, 10.0)
        successes = 0
        for start in range(0, len(plan), 8):  # batches within the publishers' history depth
            for row in plan[start:start + 8]:
                left.publish(command_trajectory(LEFT_JOINTS, row[None, :7], DT))
                right.publish(command_trajectory(RIGHT_JOINTS, row[None, 7:], DT))
            n = min(start + 8, len(plan))
            assert wait_for(lambda: _status(status).get("step") == n, 10.0), (_status(status), n)
            successes += sum(json.loads(m.data)["success"] for m in status.msgs)
            status.clear()
        assert successes > 0 and sim.env.success()
        assert np.array_equal(sim.env.state(), final_direct)


def test_lockstep_with_executor_on_sim_time_drives_itself():
    """The executor (use_sim_time) commands on each /clock tick and each command pair ticks the sim:
    after one kick on /sim/step the loop runs on its own, as fast as the nodes go, with no wall-clock
    dependence."""
    from ki_vla_ros.executor_node import ExecutorNode

    with ros_harness() as h:
        sim = h.add(SimNode(context=h.context, parameter_overrides=_params(mode="lockstep", camera_hz=0.0)))
        ex = h.add(ExecutorNode(context=h.context, parameter_overrides=_params(use_sim_time=True)))
        t = h.node("sim_kick")
        step = t.create_publisher(UInt32, "/sim/step", RELIABLE_QOS)
        assert wait_for(lambda: step.get_subscription_count() >= 1, 10.0)
        assert wait_for(lambda: getattr(ex.core, "measured", None) is not None, 10.0)  # executor saw /joint_states
        step.publish(UInt32(data=1))
        assert wait_for(lambda: sim.ticks >= 60, 20.0), (sim.ticks, ex.commands)
        assert sim.rejected == 0 and ex.commands >= 59


def test_realtime_mode_advances_with_the_wall_clock():
    with ros_harness() as h:
        h.add(SimNode(context=h.context, parameter_overrides=_params(mode="realtime", camera_hz=0.0)))
        t = h.node("sim_rt_test")
        status = Collector(t, String, "/sim/status", RELIABLE_QOS)
        assert wait_for(lambda: _status(status).get("step", 0) >= 25, 10.0)
        first = status.items[-1]
        assert wait_for(lambda: _status(status).get("step", 0) >= json.loads(first[1].data)["step"] + 25, 10.0)
        last = status.items[-1]
        sim_dt = json.loads(last[1].data)["clock"] - json.loads(first[1].data)["clock"]
        wall_dt = last[0] - first[0]
        assert 0.4 < sim_dt / wall_dt < 1.6  # paced by the wall clock, not free-running


def test_bad_parameters_raise():
    with ros_harness() as h:
        with pytest.raises(ValueError, match="mode"):
            SimNode(context=h.context, parameter_overrides=_params(mode="fast"))
        with pytest.raises(ValueError, match="camera_hz"):
            SimNode(context=h.context, parameter_overrides=_params(camera_hz=30.0))


def test_scripted_recorder_joins_a_sim_that_is_already_up(tmp_path):
    """In lockstep the sim sends its start-up status once, then waits. A recorder that subscribes after that
    (what a slow machine makes of `collect --bag` starting both at once) must still record the episode."""
    import time

    from ki_vla.sim.scenes import BimanualSim
    from ki_vla.sim.scripted import ScriptedPolicy, run_scripted_episode
    from ki_vla_ros.scripted_recorder import ScriptedRecorder

    env = BimanualSim("transfer_cube", seed=1, cameras=(), image_size=(32, 48))
    try:
        ep = run_scripted_episode(env, ScriptedPolicy("transfer_cube"), 1, render=False)
    finally:
        env.close()
    assert ep["success"]
    np.savez(tmp_path / "episodes.npz", seeds=np.array([1]), actions=ep["actions"][None])
    with ros_harness() as h:
        sim = h.add(SimNode(context=h.context, parameter_overrides=_params(
            mode="lockstep", lockstep_on_command=True, task="transfer_cube", seed=1, image_height=32, image_width=48,
            camera_hz=25.0, camera_names=["cam_high"], instruction_topic="/instruction", idle_republish_period=0.0)))
        assert wait_for(lambda: sim._last is not None, 60.0)  # the start-up status is out, heard by nobody
        time.sleep(0.5)
        rec = h.add(ScriptedRecorder(context=h.context, parameter_overrides=_params(
            episodes_file=str(tmp_path / "episodes.npz"), output=str(tmp_path / "bags"), camera_names=["cam_high"],
            startup_timeout=30.0)))
        rec._worker.join(timeout=120.0)
        assert not rec._worker.is_alive() and rec.error == ""
    assert (tmp_path / "bags" / "episode_000000" / "metadata.yaml").is_file()


def test_position_controller_interface_executor_drives_the_sim():
    """command_interface=position (ALOHA's streaming JointGroupPositionController): the executor publishes one
    Float64MultiArray per arm and tick, the sim holds each until the next and ticks on each pair; a message with
    the wrong number of joints is rejected and counted, never applied; JTC topic names in position mode are refused
    at start (a silent no-op on a robot)."""
    from std_msgs.msg import Float64MultiArray

    from ki_vla_ros.executor_node import ExecutorNode

    topics = dict(command_topics=["left_arm_controller/commands", "right_arm_controller/commands"],
                  command_interface="position")
    with ros_harness() as h:
        sim = h.add(SimNode(context=h.context, parameter_overrides=_params(mode="lockstep", camera_hz=0.0, **topics)))
        ex = h.add(ExecutorNode(context=h.context, parameter_overrides=_params(use_sim_time=True, **topics)))
        t = h.node("sim_position_kick")
        cmds = Collector(t, Float64MultiArray, "/left_arm_controller/commands", RELIABLE_QOS)
        step = t.create_publisher(UInt32, "/sim/step", RELIABLE_QOS)
        bad = t.create_publisher(Float64MultiArray, "/left_arm_controller/commands", RELIABLE_QOS)
        assert wait_for(lambda: step.get_subscription_count() >= 1, 10.0)
        assert wait_for(lambda: getattr(ex.core, "measured", None) is not None, 10.0)
        step.publish(UInt32(data=1))
        assert wait_for(lambda: sim.ticks >= 60, 20.0), (sim.ticks, ex.commands)
        assert sim.rejected == 0 and len(cmds) and len(cmds.msgs[-1].data) == len(LEFT_JOINTS)
        np.testing.assert_allclose(cmds.msgs[-1].data, sim.env.state()[:7], atol=0.05)   # holding home
        bad.publish(Float64MultiArray(data=[0.0] * 3))
        assert wait_for(lambda: sim.rejected >= 1, 10.0)
        with pytest.raises(ValueError, match="command_topics"):
            SimNode(context=h.context, parameter_overrides=_params(command_interface="position"))
        with pytest.raises(ValueError, match="command_interface"):
            ExecutorNode(context=h.context, parameter_overrides=_params(command_interface="effort"))


def test_interbotix_layout_drives_the_sim_through_four_controllers_in_robot_units():
    """config/vx300s.yaml (Interbotix's per-arm ros2_control: namespaces, unprefixed names, a 6-joint arm and a
    1-joint gripper JTC per arm, the finger in metres) with the sim behind the same topics: joint states arrive per
    namespace, the executor commands four controllers with look-ahead points, the gripper in metres within the
    finger's limits, and a chunk moves the arm it names."""
    import dataclasses

    from ki_vla_ros.config import ExecutorNodeConfig, SimNodeConfig, read_parameter_file
    from ki_vla_ros.executor_node import ExecutorNode
    from ki_vla_ros.msgs import chunk_to_trajectory

    params = read_parameter_file("config/vx300s.yaml")

    def node_params(name: str, cls: type, **extra):
        fields = {f.name for f in dataclasses.fields(cls)}
        return _params(**{k: v for k, v in params[name].items() if k in fields}, **extra)

    with ros_harness() as h:
        sim = h.add(SimNode(context=h.context, parameter_overrides=node_params(
            "sim_node", SimNodeConfig, mode="lockstep", camera_hz=0.0, jtc_origin="measured")))   # Interbotix's JTCs
        ex = h.add(ExecutorNode(context=h.context, parameter_overrides=node_params(
            "executor_node", ExecutorNodeConfig, use_sim_time=True)))
        t = h.node("vx300s_layout_test")
        left_js = Collector(t, JointState, "/follower_left/joint_states", RELIABLE_QOS)
        grip = Collector(t, JointTrajectory, "/follower_right/gripper_controller/joint_trajectory", RELIABLE_QOS)
        arm = Collector(t, JointTrajectory, "/follower_left/arm_controller/joint_trajectory", RELIABLE_QOS)
        chunks = t.create_publisher(JointTrajectory, "/ki_vla/action_chunk", RELIABLE_QOS)
        step = t.create_publisher(UInt32, "/sim/step", RELIABLE_QOS)
        assert wait_for(lambda: step.get_subscription_count() >= 1 and len(left_js) > 0, 10.0)
        assert wait_for(lambda: getattr(ex.core, "measured", None) is not None, 10.0)
        step.publish(UInt32(data=1))
        assert wait_for(lambda: sim.ticks >= 40, 20.0), (sim.ticks, ex.commands)
        assert sim.rejected == 0
        home = sim.env.state().copy()
        js = left_js.msgs[-1]
        assert list(js.name) == ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate",
                                 "left_finger"]
        assert js.position[6] == pytest.approx(0.021 + 0.036 * home[6], abs=1e-6)   # the finger in metres
        g = grip.msgs[-1]
        assert list(g.joint_names) == ["left_finger"] and len(g.points) == 5
        assert all(0.021 - 1e-9 <= p.positions[0] <= 0.057 + 1e-9 for p in g.points)
        assert len(arm.msgs[-1].joint_names) == 6
        # A chunk (policy names and units) that turns the right waist by 0.2 rad over one second.
        actions = np.repeat(home[None], 50, axis=0)
        actions[:, 7] += np.linspace(0.0, 0.2, 50)
        chunks.publish(chunk_to_trajectory(actions, JOINT_NAMES, sim.robot.clock, DT))
        assert wait_for(lambda: abs(sim.env.state()[7] - home[7] - 0.2) < 0.03, 20.0), sim.env.state()[7] - home[7]
        assert abs(sim.env.state()[0] - home[0]) < 0.03 and sim.rejected == 0
