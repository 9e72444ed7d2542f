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

"""Real-time chunking (ki_vla.infer.rtc): prefix weights, the guidance weight in our time convention, guided
sampling that agrees with the committed actions, and the rollout's chunk switches with and without it."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ki_vla.infer.rtc import RTCGuide, guidance_weight, prefix_weights, previous_at
from ki_vla.observation import Observation

SCALE = 0.01   # the random policy's units around home: its chunks are noise in time (up to 6 units per tick)


def test_prefix_weights_freeze_the_delay_and_free_the_tail():
    for schedule in ("exp", "linear"):
        w = prefix_weights(50, delay=5, exec_horizon=10, schedule=schedule)
        assert w.shape == (50,) and np.all(w[:5] == 1.0) and np.all(w[40:] == 0.0)
        assert np.all(np.diff(w[4:41]) < 0) and 0.0 < w[39] < w[5] < 1.0   # strictly decaying over the overlap
    assert prefix_weights(50, 5, 10, "exp")[20] < prefix_weights(50, 5, 10, "linear")[20]   # exp decays faster
    assert np.all(prefix_weights(50, 0, 50) == 0.0)
    for bad in (dict(delay=51, exec_horizon=0), dict(delay=10, exec_horizon=45), dict(delay=1, exec_horizon=1,
                                                                                      schedule="cosine")):
        with pytest.raises(ValueError):
            prefix_weights(50, **bad)


def test_guidance_weight_maps_the_papers_time_onto_ours():
    """Paper tau = 1 - t: at t = 0.5 both give 1 * (0.25 + 0.25) / 0.25 = 2; near noise and near clean it is the
    clip beta."""
    assert guidance_weight(0.5, beta=5.0) == pytest.approx(2.0)
    tau = 0.3
    paper = (1 - tau) / tau * (tau ** 2 + (1 - tau) ** 2) / (1 - tau) ** 2
    assert guidance_weight(1 - tau, beta=100.0) == pytest.approx(paper)
    assert guidance_weight(0.999, beta=5.0) == 5.0 and guidance_weight(0.001, beta=10.0) == 10.0
    with pytest.raises(ValueError):
        RTCGuide(np.zeros((50, 14)), delay=2, exec_horizon=5, beta=0.0)


def test_guided_sampling_agrees_with_the_committed_actions():
    """A random policy's two samples disagree everywhere; guided toward the first, the second follows it over the
    committed actions, and previous_at aligns a chunk to a later tick."""
    from ki_vla.model.policy import KIPolicy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = KIPolicy.load("config/model/tiny.yaml")
    obs = Observation.blank(policy.cfg.camera_names, policy.cfg.image_size, policy.cfg.state_dim)
    first = policy.predict(obs, generator=torch.Generator().manual_seed(1))
    committed = previous_at(first, chunk_start=0, now=5)
    np.testing.assert_array_equal(committed[:45], first[5:])
    np.testing.assert_array_equal(committed[45:], np.repeat(first[-1:], 5, axis=0))
    free = policy.predict(obs, generator=torch.Generator().manual_seed(2))
    guided = policy.predict(obs, generator=torch.Generator().manual_seed(2),
                            guide=RTCGuide(committed, delay=5, exec_horizon=10, beta=5.0))
    err_free = np.abs(free[:5] - committed[:5]).mean()
    err_guided = np.abs(guided[:5] - committed[:5]).mean()
    assert err_guided < 0.1 * err_free, (err_guided, err_free)
    with pytest.raises(ValueError, match="shape"):
        policy.predict(obs, guide=RTCGuide(committed[:10], delay=2, exec_horizon=2))


def test_rtc_switches_chunks_far_more_smoothly_than_latest_for_a_random_policy():
    """The fast test of the inpainting: a random policy's consecutive chunks disagree, so following the latest chunk
    jumps at every switch; guided by the committed plan (2 ticks of latency, a new chunk every 5), the switches are
    small. The first chunk is unguided (nothing committed)."""
    from ki_vla.eval.rollout import RolloutConfig, run_episode
    from ki_vla.control.safety import JointLimits
    from ki_vla.joints import JOINT_NAMES
    from ki_vla.model.policy import KIPolicy
    from ki_vla.paths import resolve
    from ki_vla.sim.scenes import BimanualSim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inner = KIPolicy.load("config/model/tiny.yaml")
    limits = JointLimits.from_urdf(resolve("urdf/aloha_vx300s.urdf"), JOINT_NAMES)
    jumps = {}
    with BimanualSim("transfer_cube", cameras=tuple(inner.cfg.camera_names), image_size=(48, 64)) as sim:
        home = sim.reset(seed=1000, render=False)["state"].astype(np.float32)

        class NearHome:
            """The random policy's chunks mapped to 0.01 x its units around home: they still disagree at every switch
            but stay within what the executor accepts (raw random chunks are refused as jumps)."""

            cfg = inner.cfg

            def predict(self, obs, generator=None, guide=None):
                if guide is not None:
                    guide = RTCGuide((guide.target - home) / SCALE, guide.delay, guide.exec_horizon, guide.beta,
                                     method=guide.method)
                return home + SCALE * inner.predict(obs, generator=generator, guide=guide)

        policy = NearHome()
        for beta in (0.0, 5.0):
            cfg = RolloutConfig(replan_every=5, latency_ticks=2, max_seconds=0.6, rtc_beta=beta,
                                merge_strategy="rtc" if beta else "latest", first_chunk_error=False)
            res = run_episode(policy, sim, cfg, seed=1000, limits=limits, generator=torch.Generator().manual_seed(0))
            assert len(res.switch_jumps) >= 4
            jumps[beta] = float(np.mean(res.switch_jumps))
    print("mean chunk-switch jump (rad), latest vs rtc:", jumps)
    assert jumps[5.0] < 0.25 * jumps[0.0], jumps


def _tiny_policy():
    from ki_vla.model.policy import KIPolicy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return KIPolicy.load("config/model/tiny.yaml")


@pytest.mark.parametrize("method", ["guided", "inpaint"])
def test_engine_samples_rtc_like_the_reference(method):
    """The engine's guided and inpainting loops are the reference sampler's, step for step (same noise); inpainting
    ends exactly on the committed actions."""
    from ki_vla.infer.engine import EnginePredictor

    policy = _tiny_policy()
    engine = EnginePredictor(policy)
    obs = Observation.blank(policy.cfg.camera_names, policy.cfg.image_size, policy.cfg.state_dim)
    committed = policy.predict(obs, generator=torch.Generator().manual_seed(1))
    guide = RTCGuide(committed, delay=5, exec_horizon=5, beta=5.0, method=method)
    ref = policy.predict(obs, generator=torch.Generator().manual_seed(2), guide=guide)
    fast = engine.predict(obs, generator=torch.Generator().manual_seed(2), guide=guide)
    np.testing.assert_allclose(fast, ref, atol=1e-4)
    free = engine.predict(obs, generator=torch.Generator().manual_seed(2))
    assert np.abs(free[:5] - committed[:5]).mean() > 10 * np.abs(fast[:5] - committed[:5]).mean()
    if method == "inpaint":
        np.testing.assert_allclose(ref[:5], committed[:5], atol=1e-4)
    with pytest.raises(ValueError, match="method"):
        RTCGuide(committed, delay=5, exec_horizon=5, method="hard")


def test_guide_from_plan_reads_the_plan_at_the_chunks_times():
    from ki_vla.infer.rtc import guide_from_plan

    plan = np.arange(20, dtype=np.float64)[:, None] * np.ones((1, 14))   # point j = j, at 1.0 + j * 0.02
    g = guide_from_plan(1.0, 0.02, plan, stamp=1.05, dt=0.02, horizon=10, delay=3, exec_horizon=3, beta=5.0)
    np.testing.assert_allclose(g.target[:, 0], 2.5 + np.arange(10))                # interpolated between points
    g = guide_from_plan(1.0, 0.02, plan, stamp=1.3, dt=0.02, horizon=10, delay=3, exec_horizon=3, beta=5.0)
    assert g.target[-1, 0] == 19.0 and g.delay == 3                                 # past its end: the last point
    assert guide_from_plan(1.0, 0.02, plan, stamp=1.5, dt=0.02, horizon=10, delay=3, exec_horizon=3, beta=5.0) is None
    assert guide_from_plan(1.0, 0.02, plan[:0], stamp=1.0, dt=0.02, horizon=10, delay=3, exec_horizon=3,
                           beta=5.0) is None


def test_committed_plan_measures_the_delay_and_frees_the_first_chunk():
    """The delay is the most control periods recent inferences took (not a configured maximum); with no plan, or
    after the executor announced a hold (an empty plan), the next chunk is unguided; the plan of the chunk just
    published is awaited."""
    from ki_vla.infer.rtc import CommittedPlan, DelayEstimator

    est = DelayEstimator(dt=0.02, window=3)
    assert est.delay == 0
    for latency in (0.05, 0.03, 0.021, 0.019):
        est.record(latency)
    assert est.delay == 2                              # 0.05 s (3 periods) has left the window of 3
    rtc = CommittedPlan(dt=0.02, horizon=10, beta=5.0, window=8)
    assert rtc.guide(1.0) is None and rtc.unguided == 1             # the first chunk: nothing committed
    rtc.published(1.0, latency_s=0.07)
    assert not rtc.wait_for_plan(0.01)                              # the executor's plan has not come yet
    rtc.set_plan(1.0, 1.07, 0.02, np.ones((10, 14)))
    assert rtc.wait_for_plan(0.0)
    g = rtc.guide(1.1)
    assert g is not None and g.delay == 4 and g.exec_horizon == 4    # ceil(0.07 / 0.02)
    rtc.set_plan(1.2, 1.2, 0.02, None)                              # the executor holds
    assert rtc.guide(1.2) is None
    with pytest.raises(ValueError):
        CommittedPlan(dt=0.02, horizon=10, beta=5.0, method="hard")


def test_rtc_merger_starts_a_chunk_from_standstill_at_its_first_action():
    """Latency compensation skips the actions whose time passed during inference; from standstill none of them ran,
    so the rtc merger starts the first chunk (and the first after a hold) at action 0, and keeps the timestamps of
    chunks that arrive while one is executing."""
    from ki_vla.control.chunking import Chunk, make_merger

    merger = make_merger("rtc")
    first = np.linspace(0, 1, 50)[:, None] * np.ones((1, 14))
    admitted = merger.admit(Chunk(stamp=1.0, dt=0.02, actions=first), now=1.1)
    assert admitted.stamp == 1.1
    merger.add(admitted)
    np.testing.assert_allclose(merger.sample(1.1), first[0])
    second = Chunk(stamp=1.2, dt=0.02, actions=first + 0.5)
    assert merger.admit(second, now=1.26).stamp == 1.2                      # one is executing: timing kept
    latest = make_merger("latest")
    assert latest.admit(Chunk(stamp=1.0, dt=0.02, actions=first), now=1.1).stamp == 1.0


def test_training_time_rtc_masks_the_prefix_and_inference_gives_it_exactly():
    """rtc_max_delay > 0: each sample's first d actions enter the expert clean at flow time 0 and are not
    supervised (a velocity that is exact on the rest and garbage on them has zero loss), the config refuses a delay
    the horizon cannot hold, and the "prefix" method returns the committed actions exactly, in the reference sampler
    and the engine alike."""
    from ki_vla.infer.engine import EnginePredictor
    from ki_vla.model.config import PolicyConfig
    from ki_vla.model.policy import KIPolicy

    cfg = PolicyConfig.from_yaml("config/model/tiny.yaml").to_dict()
    cfg["rtc_max_delay"] = 10
    torch.manual_seed(0)
    policy = KIPolicy(PolicyConfig.from_dict(cfg)).eval()
    batch = policy.example_batch(batch_size=4)
    actions = batch["actions"].float()
    seen = {}

    def fake_velocity(x_t, t, *_):
        seen["t"] = t
        prefix = t == 0
        exact = (x_t - actions) / t.clamp(min=1e-6)[..., None]
        return torch.where(prefix[..., None], torch.full_like(x_t, 100.0), exact)

    policy._expert_velocity = fake_velocity
    out = policy.compute_loss(batch, generator=torch.Generator().manual_seed(3))
    t = seen["t"]
    assert t.shape == (4, policy.cfg.horizon)
    delays = (t == 0).sum(1)
    assert bool((delays <= 10).all()) and int(delays.max()) > 0
    for i, d in enumerate(delays.tolist()):   # the prefix first, then one flow time for the rest
        assert bool((t[i, :d] == 0).all()) and bool((t[i, d:] == t[i, -1]).all())
    assert float(out["flow"]) < 1e-8
    with pytest.raises(ValueError, match="rtc_max_delay"):
        PolicyConfig.from_dict({**cfg, "rtc_max_delay": 50})
    del policy._expert_velocity

    obs = Observation.blank(policy.cfg.camera_names, policy.cfg.image_size, policy.cfg.state_dim)
    committed = policy.predict(obs, generator=torch.Generator().manual_seed(1))
    guide = RTCGuide(committed, delay=6, exec_horizon=6, method="prefix")
    ref = policy.predict(obs, generator=torch.Generator().manual_seed(2), guide=guide)
    np.testing.assert_allclose(ref[:6], committed[:6], atol=1e-5)
    assert np.abs(ref[6:] - committed[6:]).mean() > 1e-3
    fast = EnginePredictor(policy).predict(obs, generator=torch.Generator().manual_seed(2), guide=guide)
    np.testing.assert_allclose(fast, ref, atol=1e-4)
