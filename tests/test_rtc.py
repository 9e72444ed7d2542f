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
    from ki_vla.infer.safety import JointLimits
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
                    guide = RTCGuide((guide.target - home) / SCALE, guide.delay, guide.exec_horizon, guide.beta)
                return home + SCALE * inner.predict(obs, generator=generator, guide=guide)

        policy = NearHome()
        for beta in (0.0, 5.0):
            cfg = RolloutConfig(replan_every=5, latency_ticks=2, max_seconds=0.6, rtc_beta=beta,
                                first_chunk_error=False)
            res = run_episode(policy, sim, cfg, seed=1000, limits=limits, generator=torch.Generator().manual_seed(0))
            assert len(res.switch_jumps) >= 4
            jumps[beta] = float(np.mean(res.switch_jumps))
    print("mean chunk-switch jump (rad), latest vs rtc:", jumps)
    assert jumps[5.0] < 0.25 * jumps[0.0], jumps
