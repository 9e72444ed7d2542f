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

"""The static-shape engine reproduces the reference sampler (tiny model, CPU, float32)."""
import dataclasses

import numpy as np
import pytest
import torch

from ki_vla import KIPolicy, PolicyConfig
from ki_vla.infer.engine import InferenceEngine
from ki_vla.model.expert import open_time_gates


def trained_like(variant: str) -> KIPolicy:
    torch.manual_seed(0)
    policy = KIPolicy(dataclasses.replace(PolicyConfig.from_yaml("config/model/tiny.yaml"), variant=variant))
    open_time_gates(policy)  # zero at init: opened so every path carries signal
    return policy.eval()


@pytest.mark.parametrize("variant", ["ki", "pi0"])
def test_engine_matches_reference(variant):
    """Tolerance 1e-5 absolute in real units: same float32 math, different buffer handling."""
    policy = trained_like(variant)
    batch = policy.example_batch(2, seed=3)
    batch["text_valid"][1, :40] = False  # different prompt lengths inside one batch
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(1))
    engine = InferenceEngine(policy, batch_size=2)
    ref = policy.sample_actions(batch, noise=noise)
    got = engine.sample_actions(batch, noise=noise)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # the buffers are reused: a second, different request gives its own answer, not a stale one
    noise2 = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(engine.sample_actions(batch, noise=noise2), policy.sample_actions(batch, noise=noise2),
                               atol=1e-5, rtol=0)


def test_engine_rejects_what_it_cannot_serve():
    with pytest.raises(ValueError, match="pi0_fast"):
        InferenceEngine(KIPolicy(dataclasses.replace(PolicyConfig.from_yaml("config/model/tiny.yaml"),
                                                     variant="pi0_fast")))
    policy = trained_like("ki")
    engine = InferenceEngine(policy, batch_size=1)
    with pytest.raises(ValueError, match="engine built for"):
        engine.sample_actions(policy.example_batch(2))
    with pytest.raises(ValueError, match="CUDA"):
        InferenceEngine(policy, cuda_graphs=True, device="cpu")


def test_engine_predictor_serves_observations_like_the_policy():
    from ki_vla.infer.engine import EnginePredictor, make_predictor
    from ki_vla.observation import Observation

    policy = trained_like("ki")
    assert make_predictor(policy, "off") is policy
    fast = KIPolicy(dataclasses.replace(policy.cfg, variant="pi0_fast"))
    assert make_predictor(fast, "auto") is fast  # autoregressive decoding: the reference path
    predictor = make_predictor(policy, "auto")
    assert isinstance(predictor, EnginePredictor)
    assert (predictor.kind, policy.kind) == ("inference engine", "reference sampler")  # what the node logs
    obs = Observation.blank(policy.cfg.camera_names, 48, 14, instruction="transfer the red cube")
    a = predictor.predict(obs, generator=torch.Generator().manual_seed(4))
    b = policy.predict(obs, generator=torch.Generator().manual_seed(4))
    assert a.shape == (50, 14) and a.dtype.name == "float32"
    torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="missing camera"):  # both validate through Processor.observation_batch
        predictor.predict(Observation({}, np.zeros(14, np.float32), "transfer the red cube"))
    with pytest.raises(ValueError, match="missing camera"):
        policy.predict(Observation({}, np.zeros(14, np.float32), "transfer the red cube"))
    predictor.warmup()
    with pytest.raises(ValueError, match="engine must be"):
        make_predictor(policy, "maybe")
    with pytest.raises(ValueError, match="fuse must be"):
        make_predictor(policy, "on", fuse="yes")
    assert not make_predictor(policy, "on", fuse="off").engine.fused
    with pytest.raises(ValueError, match="pi0_fast"):
        make_predictor(KIPolicy(dataclasses.replace(policy.cfg, variant="pi0_fast")), "on")


def test_fused_engine_matches_reference_and_fuses_norms_and_activations():
    """torch.compile fusion (what the engine does by default on a GPU), here with inductor's CPU backend."""
    from ki_vla.infer.fusion import compiled_kernel_names

    policy = trained_like("ki")
    batch = policy.example_batch(1, seed=5)
    noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(6))
    engine = InferenceEngine(policy, batch_size=1, fuse=True)
    assert engine.fused and engine.policy is not policy  # the caller's policy is not compiled in place
    torch.testing.assert_close(engine.sample_actions(batch, noise=noise), policy.sample_actions(batch, noise=noise),
                               atol=1e-4, rtol=0)
    # the generated code: the adaRMS norm (reduction + modulation) and act(gate) * up are single kernels
    buf, layer = engine.buffers, policy.expert.layers[0]
    x, cond = torch.randn(1, 50, 32), torch.randn(1, 32)
    names = compiled_kernel_names(layer, x, cond, buf.kv[0], buf.mask, buf.cos, buf.sin, True)
    assert any(all(op in n for op in ("mean", "rsqrt", "mul", "add")) for n in names), names
    assert any("silu" in n and "mul" in n for n in names), names


@pytest.mark.parametrize("model", ["tiny", "smol", "pi05"])
def test_engine_stages_are_cuda_graph_capturable(model):
    """No host syncs and no CPU tensors inside vision, prefix and the denoising loop (checked on the meta device)."""
    from ki_vla.infer.capture_check import capture_problems

    assert capture_problems(PolicyConfig.from_yaml(f"config/model/{model}.yaml")) == {
        "vision": None, "prefix": None, "expert": None}


def test_capture_check_catches_a_host_sync(monkeypatch):
    """Transformers' own Idefics3 vision forward syncs (mask.all()); the check must say so."""
    from ki_vla.infer.capture_check import capture_problems
    from ki_vla.model.backbone import VLMBackbone

    monkeypatch.setattr(VLMBackbone, "_idefics3_vision",
                        lambda self, pixels: self.vision_model(pixel_values=pixels).last_hidden_state)
    problems = capture_problems(PolicyConfig.from_yaml("config/model/tiny.yaml"))
    assert problems["vision"] and "host" in problems["vision"]
    assert problems["prefix"] is None and problems["expert"] is None


def test_idefics3_vision_path_equals_transformers_forward():
    policy = trained_like("ki")
    size = policy.cfg.vision.image_size
    pixels = torch.rand(3, 3, size, size) * 2 - 1
    with torch.no_grad():
        ours = policy.backbone._idefics3_vision(pixels)
        theirs = policy.backbone.vision_model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match="patches"):
            policy.backbone._idefics3_vision(torch.zeros(1, 3, 2 * size, 2 * size))


def test_engine_prompt_budget():
    """A tighter static prompt budget gives the reference's answer while the prompt fits, and refuses one that
    does not (a clear error, not silently truncated instructions)."""
    policy = trained_like("ki")
    batch = policy.example_batch(1, seed=7)
    longest = int(batch["text_valid"].sum(1).max())
    noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(8))
    engine = InferenceEngine(policy, batch_size=1, text_tokens=longest + 3)
    assert engine.buffers.kv[0][0].shape[2] == policy.cfg.num_image_tokens + longest + 3 + policy.cfg.horizon
    torch.testing.assert_close(engine.sample_actions(batch, noise=noise), policy.sample_actions(batch, noise=noise),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=f"prompt of {longest} tokens exceeds"):
        InferenceEngine(policy, batch_size=1, text_tokens=longest - 1).sample_actions(batch, noise=noise)
    with pytest.raises(ValueError, match="text_tokens must be"):
        InferenceEngine(policy, text_tokens=policy.cfg.max_text_tokens + 1)


@pytest.mark.parametrize("conditioning", ["adarms", "mlp"])
def test_precomputed_step_conditioning_equals_the_time_input(conditioning):
    cfg = PolicyConfig.from_yaml("config/model/tiny.yaml")
    cfg = dataclasses.replace(cfg, variant="ki", expert=dataclasses.replace(cfg.expert, time_conditioning=conditioning))
    torch.manual_seed(0)
    policy = KIPolicy(cfg).eval()
    open_time_gates(policy, bias_mean=0.0, bias_std=0.0)
    batch = policy.example_batch(2)
    with torch.no_grad():
        kv, valid = policy.prefix_cache(batch)
        inputs = policy.expert_inputs(valid)
        x, t = torch.randn(2, 50, 32), torch.tensor([0.7, 0.3])
        direct = policy.expert(x, t, kv, *inputs)
        pre = policy.expert(x, None, kv, *inputs, conditioning=policy.expert.step_conditioning(t))
    torch.testing.assert_close(pre, direct, atol=1e-5, rtol=0)


def test_merged_projections_equal_the_checkpoint_layout():
    import copy

    from ki_vla.model.attention import sdpa_mask
    from ki_vla.model.projections import merge_projections

    policy = trained_like("ki")
    layer = policy.backbone.layers[0]
    merged = copy.deepcopy(layer)
    merge_projections(merged)
    assert not hasattr(merged.self_attn, "q_proj") and hasattr(merged.mlp, "gate_up_proj")
    x = torch.randn(2, 7, policy.cfg.text.hidden_size)
    tc = policy.cfg.text
    mask = sdpa_mask(torch.ones(2, 7, 7, dtype=torch.bool), tc.num_heads // tc.num_kv_heads)
    cos, sin = policy.backbone.rope(torch.arange(7)[None].expand(2, 7), x)
    with torch.no_grad():
        for a, b in zip(layer(x, mask, cos, sin), merged(x, mask, cos, sin), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_engine_denoising_loop_runs_four_gemms_per_layer_and_step():
    """Merged Q/K/V and gate/up, adaRMS and time MLP precomputed: per step, action in/out + 4 per layer
    (the reference runs 2 + 2 time MLP + 9 per layer + 1 final-norm modulation)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountGemms(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
                CountGemms.count += 1
            return func(*args, **(kwargs or {}))

    policy = trained_like("ki")
    engine = InferenceEngine(policy, batch_size=1)
    engine.load(policy.example_batch(1), torch.zeros(1, 50, 32))
    engine.run_stage("vision")
    engine.run_stage("prefix")
    with CountGemms(), torch.no_grad():
        engine.run_stage("expert")
    layers, steps = policy.cfg.text.num_layers, engine.num_steps
    assert CountGemms.count == steps * (2 + 4 * layers)


def pi05_layout(variant: str = "ki") -> KIPolicy:
    """pi0.5's layout (SigLIP vision, Gemma text with one K/V head, adaRMS expert) at toy size."""
    raw = PolicyConfig.from_yaml("config/model/tiny.yaml").to_dict()
    raw["variant"] = variant
    raw["vision"].update(arch="siglip", scale_factor=1)  # 16 patch tokens per camera, no pixel shuffle
    raw["text"].update(arch="gemma", num_kv_heads=1)
    torch.manual_seed(0)
    policy = KIPolicy(PolicyConfig.from_dict(raw))
    open_time_gates(policy)
    return policy.eval()


@pytest.mark.parametrize("fuse", [False, True])
def test_engine_matches_reference_in_the_pi05_layout(fuse):
    policy = pi05_layout()
    assert policy.cfg.vision.arch == "siglip" and policy.cfg.text.arch == "gemma"
    batch = policy.example_batch(1, seed=9)
    noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(10))
    engine = InferenceEngine(policy, batch_size=1, fuse=fuse)
    torch.testing.assert_close(engine.sample_actions(batch, noise=noise), policy.sample_actions(batch, noise=noise),
                               atol=1e-4 if fuse else 1e-5, rtol=0)


def test_auto_fusion_falls_back_to_the_unfused_engine(monkeypatch, caplog):
    """fuse=auto: a failing compile must not leave the robot without a policy; fuse=on: it is an error."""
    from ki_vla.infer import engine as engine_mod
    from ki_vla.infer import fusion

    def broken(policy):
        raise RuntimeError("inductor: no working compiler")

    monkeypatch.setattr(engine_mod, "fuse_by_default", lambda device: True)  # as on a GPU
    monkeypatch.setattr(fusion, "fuse_layers", broken)
    policy = trained_like("ki")
    with caplog.at_level("WARNING"):
        predictor = engine_mod.make_predictor(policy, "auto", fuse="auto")
    assert not predictor.engine.fused and "serving the unfused engine" in caplog.text
    with pytest.raises(RuntimeError, match="no working compiler"):
        engine_mod.make_predictor(policy, "on", fuse="on")


@pytest.mark.parametrize("delta", [False, True])
def test_engine_matches_reference_with_the_expert_state_input(delta):
    """The small CPU recipe's expert reads the continuous state: the engine's state buffer must be refreshed per
    request (a stale state would replay the previous observation's joints). A delta-action model's chunk is
    relative to that state in the engine too."""
    cfg = dataclasses.replace(PolicyConfig.from_yaml("config/model/small.yaml"), delta_actions=delta,
                              absolute_action_dims=(6, 13))
    assert cfg.expert.state_input
    torch.manual_seed(0)
    policy = KIPolicy(cfg).eval()
    open_time_gates(policy)
    engine = InferenceEngine(policy, batch_size=1, fuse=False)
    noise = torch.randn(1, cfg.horizon, cfg.max_action_dim, generator=torch.Generator().manual_seed(1))
    for seed in (0, 1):
        batch = policy.example_batch(1, seed=seed)
        batch["target_ids"], batch["target_valid"] = batch["target_ids"][:, :0], batch["target_valid"][:, :0]
        torch.testing.assert_close(engine.sample_actions(batch, noise=noise), policy.sample_actions(batch, noise=noise),
                                   atol=1e-5, rtol=0)


def test_noise_scale_scales_the_sampled_noise_in_reference_and_engine():
    """noise_scale s samples from s * N(0, I): the same generator gives what explicit noise s * z gives, in the
    reference sampler and the engine alike; at 0 sampling is deterministic (the mean-seeking smooth chunk)."""
    policy = trained_like("ki")
    batch = policy.example_batch(1, seed=4)
    z = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(7))
    policy.set_noise_scale(0.3)
    engine = InferenceEngine(policy, batch_size=1)
    want = policy.sample_actions(batch, noise=0.3 * z)
    torch.testing.assert_close(policy.sample_actions(batch, generator=torch.Generator().manual_seed(7)), want,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(engine.sample_actions(batch, generator=torch.Generator().manual_seed(7)), want,
                               atol=1e-5, rtol=0)
    policy.set_noise_scale(0.0)
    a = engine.sample_actions(batch, generator=torch.Generator().manual_seed(1))
    b = engine.sample_actions(batch, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="noise_scale must be in"):
            policy.set_noise_scale(bad)
    with pytest.raises(ValueError, match="noise_scale must be in"):
        PolicyConfig.from_dict({**PolicyConfig.from_yaml("config/model/tiny.yaml").to_dict(), "noise_scale": 2.0})
