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

"""Closed-loop evaluation: episode bookkeeping and statistics, and one short episode through the real ROS graph."""
import json
from pathlib import Path

import pytest

from ki_vla.cli import main
from ki_vla.eval.closed_loop import EpisodeTracker, success_interval, summarize


def status(seed, t, success=False, reward=0, max_reward=4):
    return {"seed": seed, "episode_time": t, "success": success, "reward": reward, "max_reward": max_reward,
            "instruction": "transfer the cube"}


def test_tracker_ignores_statuses_from_before_the_reset():
    tr = EpisodeTracker(episodes=2, seed=0, max_seconds=2.0)
    assert tr.start() == 0
    assert tr.on_status(status(0, 7.5)) is None      # the sim's own first episode, same seed, long running
    assert tr.on_status(status(9, 0.0)) is None      # another seed
    assert not tr.running
    assert tr.on_status(status(0, 0.02)) is None      # our reset: the episode begins
    assert tr.running
    assert tr.on_status(status(0, 1.0, reward=2)) is None
    done = tr.on_status(status(0, 2.0, reward=1))
    assert done is not None and not done.success and done.reward_fraction == 0.5 and done.duration_s == 2.0
    assert tr.start() == 1
    tr.on_status(status(1, 0.0))
    done = tr.on_status(status(1, 0.7, success=True, reward=4))
    assert done.success and tr.done
    with pytest.raises(RuntimeError):
        tr.start()


def test_wilson_interval_known_values():
    low, high = success_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-3)
    low, high = success_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    assert success_interval(0, 0) == (0.0, 1.0)


def test_summary_fields():
    tr = EpisodeTracker(episodes=1, seed=3, max_seconds=1.0)
    tr.start()
    tr.on_status(status(3, 0.0))
    tr.current.latency_ms = [10.0, 30.0]
    tr.current.command_rate_hz = 50.0
    ep = tr.on_status(status(3, 0.4, success=True, reward=4))
    m = summarize([ep], {"task": "transfer_cube"})
    assert m["success_rate"] == 1.0 and m["latency_ms_p50"] == 20.0 and m["control_rate_hz"] == 50.0
    assert m["episodes"] == 1 and m["per_episode"][0]["seed"] == 3


def test_eval_sim_lockstep_episode_through_ros(tmp_path):
    """A random tiny policy drives the sim through sim_node, camera_node, policy_node and executor_node."""
    report = tmp_path / "report"
    code = main(["eval-sim", "--model", "config/model/tiny.yaml", "--task", "transfer_color", "--target", "blue",
                 "--episodes", "1", "--max-seconds", "1.0", "--mode", "lockstep", "--videos", "1",
                 "--sim-image-size", "48x64", "--report", str(report), "--quiet", "--startup-timeout", "120",
                 "--merger", "latest",
                 "--min-inference-period", "0.05", "--noise-scale", "0.5"])
    assert code == 0
    m = json.loads((report / "metrics.json").read_text())
    assert m["episodes"] == 1 and m["success_rate"] == 0.0 and m["mode"] == "lockstep"
    assert m["merge_strategy"] == "latest" and m["min_inference_period"] == 0.05  # the graph ran what was asked
    assert m["noise_scale"] == 0.5
    assert m["per_episode"][0]["chunks"] > 0 and m["control_rate_hz"] > 0
    assert m["per_episode"][0]["instruction"] == "transfer the blue cube" and m["target"] == "blue"
    assert m["wrong_cube_moved_rate"] is not None  # measured from the sim's status on transfer_color
    assert "RANDOM weights" in (report / "report.md").read_text()
    assert (report / m["per_episode"][0]["video"]).stat().st_size > 0


def test_eval_sim_rejects_bad_input(tmp_path):
    assert main(["eval-sim", "--model", str(tmp_path / "none"), "--task", "transfer_cube", "--report",
                 str(tmp_path / "r")]) == 2
    assert main(["eval-sim", "--model", "config/model/tiny.yaml", "--task", "transfer_cube", "--episodes", "0",
                 "--report", str(tmp_path / "r")]) == 2
    assert main(["eval-sim", "--model", "config/model/tiny.yaml", "--task", "transfer_cube", "--target", "red",
                 "--report", str(tmp_path / "r")]) == 2


def test_an_episode_that_moved_the_wrong_cube_once_counts():
    tr = EpisodeTracker(episodes=1, seed=5, max_seconds=1.0)
    tr.start()
    tr.on_status({**status(5, 0.0), "wrong_cube_moved": False})
    tr.on_status({**status(5, 0.3), "wrong_cube_moved": True})
    ep = tr.on_status({**status(5, 1.0), "wrong_cube_moved": False})  # the cube rolled back: still moved
    assert ep.wrong_cube_moved is True
    assert summarize([ep], {})["wrong_cube_moved_rate"] == 1.0
    assert summarize([ep.__class__(**{**ep.__dict__, "wrong_cube_moved": None})], {})["wrong_cube_moved_rate"] is None


def test_outcomes_described_stage_by_stage():
    from ki_vla.eval.closed_loop import describe_outcomes

    text = describe_outcomes([4, 4, 2, 2, 2, 0], "transfer_cube")
    assert "touched the cube with the right gripper in 5/6" in text and "lifted it off the table in 5/6" in text
    assert "completed the handover (left holds it in the air) in 2/6" in text
    assert "Most failures (3 of 4) stopped after it lifted it off the table" in text
    assert "Most failures" not in describe_outcomes([4, 4], "transfer_cube")
    assert describe_outcomes([], "transfer_cube") == "" and describe_outcomes([1], "unknown") == ""


def test_the_evaluator_measures_the_executors_command_topic():
    """Control rate and jerk come from the topic and message type the executor really publishes (a position
    config used to leave them unmeasured: the evaluator listened for trajectories that never came)."""
    import yaml

    from ki_vla.eval.cli.sim import _measured_commands

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "config" / "bimanual.yaml").read_text())
    assert _measured_commands(params) == ("/left_arm_controller/joint_trajectory", "trajectory")
    params["executor_node"]["ros__parameters"].update(
        command_interface="position", command_topics=["left_arm_controller/commands", "right_arm_controller/commands"])
    assert _measured_commands(params) == ("/left_arm_controller/commands", "position")
    vx = yaml.safe_load((root / "config" / "vx300s.yaml").read_text())
    topic, interface = _measured_commands(vx)
    assert topic.startswith("/follower_left/") and interface == "trajectory"
