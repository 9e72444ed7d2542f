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

"""ROS-free closed-loop rollouts (ki_vla.eval.rollout) and the learning-curve command built on them."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ki_vla.eval.rollout import RolloutConfig, RolloutResult, run_episode, scene_dependence, summarize
from ki_vla.control.safety import JointLimits
from ki_vla.joints import CONTROL_HZ, JOINT_NAMES
from ki_vla.paths import resolve
from ki_vla.sim.scenes import BimanualSim
from ki_vla.sim.scripted import ScriptedPolicy

DT = 1.0 / CONTROL_HZ


class ScriptedOracle:
    """A 'policy' that reads the sim (privileged) and answers each observation with the next 50 ticks of the
    scripted plan: a perfect policy, so a rollout failing with it would be the rollout's or the executor's fault."""

    def __init__(self, sim: BimanualSim, task: str, plan_for: str | None = None) -> None:
        self.sim, self.script, self.plan_for = sim, ScriptedPolicy(task), plan_for
        self.cfg = SimpleNamespace(camera_names=("cam_high",))
        self.plan: np.ndarray | None = None
        self.calls = 0

    def predict(self, obs, generator=None) -> np.ndarray:
        assert set(obs.images) == {"cam_high"} and obs.images["cam_high"].shape == (48, 64, 3)
        self.calls += 1
        if obs.stamp == 0.0:  # tick 0 comes straight after the reset: plan the episode from the true object poses
            real = self.sim.target
            self.sim.target = self.plan_for or real
            self.plan = self.script.plan(self.sim)
            self.sim.target = real
        i = int(round(obs.stamp / DT))
        return self.plan[np.minimum(np.arange(i, i + 50), len(self.plan) - 1)].astype(np.float32)


@pytest.fixture(scope="module")
def limits() -> JointLimits:
    return JointLimits.from_urdf(resolve("urdf/aloha_vx300s.urdf"), JOINT_NAMES)


def test_a_perfect_policy_succeeds_through_the_executor(limits):
    with BimanualSim("transfer_cube", cameras=("cam_high",), image_size=(48, 64)) as sim:
        oracle = ScriptedOracle(sim, "transfer_cube")
        res = run_episode(oracle, sim, RolloutConfig(replan_every=10), seed=1000, limits=limits)
    assert res.success and res.max_reward == 4 and res.rejected_chunks == 0
    # + 1: the first-chunk probe (sampled from fixed noise, not executed)
    assert res.chunks + 1 == oracle.calls and res.chunks == int(np.ceil(res.duration_s / DT / 10))
    assert res.duration_s < 8.0  # stops at the first successful tick
    assert res.first_chunk_error is not None and res.first_chunk_error < 1e-6  # the oracle's chunk is the plan


def test_latency_and_ensembling_still_execute_the_plan(limits):
    """Chunks that arrive 3 ticks late are merged by their observation stamps (latency compensation)."""
    with BimanualSim("transfer_cube", cameras=("cam_high",), image_size=(48, 64)) as sim:
        res = run_episode(ScriptedOracle(sim, "transfer_cube"), sim,
                          RolloutConfig(replan_every=5, latency_ticks=3, merge_strategy="temporal_ensembling"),
                          seed=1001, limits=limits)
    assert res.success and res.rejected_chunks == 0
    assert res.held_ticks == 3  # nothing to follow before the first chunk arrives


def test_moving_the_wrong_cube_is_reported(limits):
    with BimanualSim("transfer_color", cameras=("cam_high",), image_size=(48, 64)) as sim:
        res = run_episode(ScriptedOracle(sim, "transfer_color", plan_for="blue"), sim,
                          RolloutConfig(task="transfer_color", target="red"), seed=1000, limits=limits)
    assert res.target == "red" and res.instruction == "transfer the red cube"
    assert not res.success and res.wrong_cube_moved
    s = summarize([res])
    assert s["wrong_cube_moved_rate"] == 1.0 and s["successes"] == 0


def test_scene_dependence_tells_a_blind_policy_from_one_that_reads_the_scene():
    rng = np.random.default_rng(0)
    plans = rng.normal(size=(6, 14)) * 0.2
    plans[:, 0] = 0.3  # a joint the plan never varies is left out

    def results(preds):
        return [RolloutResult(seed=i, success=False, max_reward=0, reward_fraction=0.0, duration_s=1.0, instruction="",
                              first_chunk_end=p.tolist(), plan_end=q.tolist())
                for i, (p, q) in enumerate(zip(preds, plans))]

    seeing = scene_dependence(results(plans))
    assert (seeing["first_chunk_scene_spread"] == pytest.approx(1.0)
            and seeing["first_chunk_scene_corr"] == pytest.approx(1.0))
    blind = scene_dependence(results(np.repeat(plans.mean(0, keepdims=True), 6, axis=0)))
    assert blind["first_chunk_scene_spread"] == pytest.approx(0.0, abs=1e-9)
    half = scene_dependence(results(0.5 * plans))
    assert (half["first_chunk_scene_spread"] == pytest.approx(0.5)
            and half["first_chunk_scene_corr"] == pytest.approx(1.0))
    assert scene_dependence(results(plans)[:2])["first_chunk_scene_spread"] is None
    assert summarize(results(plans))["first_chunk_scene_corr"] == pytest.approx(1.0)


def test_rollout_config_validation():
    with pytest.raises(ValueError, match="merge_strategy"):
        RolloutConfig(merge_strategy="average")
    with pytest.raises(ValueError, match="target"):
        RolloutConfig(task="transfer_cube", target="red")
    with pytest.raises(ValueError, match="replan_every"):
        RolloutConfig(replan_every=0)
    with pytest.raises(ValueError, match="noise_scale"):
        RolloutConfig(noise_scale=1.5)


def test_learning_curve_evaluates_every_checkpoint(tmp_path):
    """Two checkpoints of a (random-weight) run: one point each, on the same seeds, plot and report written."""
    from ki_vla import KIPolicy, PolicyConfig
    from ki_vla.cli import main
    from ki_vla.eval.cli.curve import checkpoints

    torch.manual_seed(0)
    policy = KIPolicy(PolicyConfig.from_yaml("config/model/tiny.yaml"))
    run = tmp_path / "run"
    policy.save_pretrained(run / "checkpoints" / "step_0000010" / "policy")
    policy.save_pretrained(run / "checkpoints" / "step_0000020" / "policy")
    policy.save_pretrained(run / "checkpoints" / "step_0000020" / "ema")
    (run / "checkpoints" / "step_0000030").mkdir()  # incomplete: skipped
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "ce": 0.5 / s, "flow": 0.5 / s})
                                               + "\n" for s in (1, 10, 20)))
    found = checkpoints(run)
    assert [s for s, _ in found] == [10, 20] and found[1][1].name == "ema" and found[0][1].name == "policy"
    assert [w.name for _, w in checkpoints(run, "policy")] == ["policy", "policy"]
    with pytest.raises(ValueError, match="weights must be one of"):
        checkpoints(run, "raw")
    out = tmp_path / "curve"
    rc = main(["learning-curve", "--run", str(run), "--out", str(out), "--task", "transfer_cube", "--episodes", "1",
               "--workers", "1", "--max-seconds", "0.2", "--quiet"])
    assert rc == 0
    data = json.loads((out / "curve.json").read_text())
    assert [p["step"] for p in data["points"]] == [10, 20] and all(p["episodes"] == 1 for p in data["points"])
    assert (out / "curve.png").stat().st_size > 1000 and "| 20 |" in (out / "report.md").read_text()


def test_a_corrupt_checkpoint_is_one_clear_error_not_a_hung_pool(tmp_path):
    """A worker initializer that raises makes multiprocessing.Pool respawn it forever; the error must come back."""
    from ki_vla.eval.rollout import evaluate
    from ki_vla.model.policy import KIPolicy

    ck = tmp_path / "ck"
    KIPolicy.load("config/model/tiny.yaml").save_pretrained(ck)
    weights = ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        evaluate(ck, RolloutConfig(max_seconds=0.1), seeds=[1000], workers=1, progress=False)
