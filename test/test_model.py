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

"""The model library proves the method's properties: insulation, masks, cache, variants, round trips."""
import dataclasses

import numpy as np
import pytest
import torch

from ki_vla import FastTokenizer, KIPolicy, PolicyConfig
from ki_vla.data.normalize import Normalizer
from ki_vla.model.config import VARIANTS
from ki_vla.model.expert import open_time_gates

TINY = "config/model/tiny.yaml"


@pytest.fixture(scope="module")
def cfg() -> PolicyConfig:
    return PolicyConfig.from_yaml(TINY)


@pytest.fixture(scope="module")
def fast_tok() -> FastTokenizer:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 50)[None, :, None]
    chunks = np.clip(np.sin(2 * np.pi * (rng.uniform(0.2, 1.5, (400, 1, 14)) * t + rng.uniform(0, 1, (400, 1, 14)))),
                     -1, 1)
    return FastTokenizer.fit(chunks, vocab_size=1024)


def make(cfg: PolicyConfig, variant: str, seed: int = 0, **kw) -> KIPolicy:
    """A policy whose adaRMS modulations are not at their zero init: at init every gate is 0, the expert's
    attention branch is closed, and "no gradient reaches the backbone" would hold for any variant."""
    torch.manual_seed(seed)
    policy = KIPolicy(dataclasses.replace(cfg, variant=variant), **kw)
    open_time_gates(policy)
    return policy


def grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def nonzero(gs) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in gs)


# ---- insulation ----------------------------------------------------------------------------------
def test_ki_flow_loss_never_reaches_backbone(cfg):
    policy = make(cfg, "ki")
    batch = policy.example_batch(2)
    losses = policy.compute_loss(batch)
    _flow_loss(policy, batch).backward()
    assert all(g is None or bool((g == 0).all()) for g in grads(policy.backbone)), \
        "flow gradient leaked into the backbone"
    assert nonzero(grads(policy.expert))
    # the CE loss does reach the backbone
    policy.zero_grad(set_to_none=True)
    _ce_loss(policy, batch).backward()
    assert nonzero(grads(policy.backbone))
    assert losses["ce"] > 0 and losses["flow"] > 0


@pytest.mark.parametrize("variant", ["joint", "pi0"])
def test_flow_loss_reaches_backbone_without_insulation(cfg, variant):
    policy = make(cfg, variant)
    batch = policy.example_batch(2)
    _flow_loss(policy, batch).backward()
    assert nonzero(grads(policy.backbone.language_model)), f"{variant}: flow loss should train the backbone"


def test_ki_backbone_bit_identical_after_flow_steps(cfg):
    policy = make(cfg, "ki")
    batch = policy.example_batch(2)
    before = {k: v.clone() for k, v in policy.backbone.state_dict().items()}
    expert_before = {k: v.clone() for k, v in policy.expert.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        _flow_loss(policy, batch).backward()
        opt.step()
    after = policy.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(expert_before[k], v) for k, v in policy.expert.state_dict().items())


def test_frozen_backbone_has_no_trainable_parameters(cfg):
    policy = make(cfg, "frozen")
    assert not any(p.requires_grad for p in policy.backbone.parameters())
    out = policy.compute_loss(policy.example_batch(2))
    out["loss"].backward()
    assert out["ce"] == 0 and out["flow"] > 0
    assert nonzero(grads(policy.expert))


def _flow_loss(policy: KIPolicy, batch) -> torch.Tensor:
    return policy.compute_loss(batch, generator=torch.Generator().manual_seed(1))["flow"]


def _ce_loss(policy: KIPolicy, batch) -> torch.Tensor:
    return policy.compute_loss(batch, generator=torch.Generator().manual_seed(1))["ce"]


# ---- masks -----------------------------------------------------------------------------------------
def _velocity(policy: KIPolicy, batch, with_targets: bool) -> torch.Tensor:
    torch.manual_seed(3)
    _, kv, valid = policy._run_backbone(batch, with_targets=with_targets)
    x = torch.randn(batch["actions"].shape)
    t = torch.full((x.shape[0],), 0.5)
    return policy._expert_velocity(x, t, kv, valid)


def test_fast_tokens_do_not_change_expert_output(cfg):
    policy = make(cfg, "ki").eval()
    batch = policy.example_batch(2)
    v1 = _velocity(policy, batch, with_targets=True)
    other = dict(batch)
    other["target_ids"] = torch.randint_like(batch["target_ids"], 0, cfg.text.vocab_size)
    other["target_valid"] = torch.ones_like(batch["target_valid"])
    v2 = _velocity(policy, other, with_targets=True)
    v3 = _velocity(policy, batch, with_targets=False)
    torch.testing.assert_close(v1, v2, atol=1e-6, rtol=0)
    torch.testing.assert_close(v1, v3, atol=1e-6, rtol=0)


def test_expert_never_feeds_the_backbone(cfg):
    """Backbone tokens never attend to expert tokens: whatever the actions (the expert's input), the CE term is the
    same, and its gradient reaches no expert parameter. (Comparing `_run_backbone` outputs alone would hold for any
    code: that pass never receives the actions.) `joint`, so the expert's gradient path is not cut elsewhere."""
    policy = make(cfg, "joint").eval()
    batch = policy.example_batch(2)
    other = dict(batch, actions=torch.randn_like(batch["actions"]) * 5, state=torch.randn_like(batch["state"]))
    out = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    out2 = policy.compute_loss(other, generator=torch.Generator().manual_seed(0))
    assert out["ce"] == out2["ce"] and out["flow"] != out2["flow"]
    out["ce"].backward()
    assert all(g is None or bool((g == 0).all()) for g in grads(policy.expert)), "CE gradient reached the expert"
    assert nonzero(grads(policy.backbone))


def test_prefix_is_bidirectional_and_targets_causal(cfg):
    """Changing the last prompt token changes the first image token's K (bidirectional prefix); changing a
    later target token leaves earlier target positions untouched (causal)."""
    policy = make(cfg, "ki").eval()
    batch = policy.example_batch(1)
    h1, kv1, _ = policy._run_backbone(batch, with_targets=True)
    b2 = dict(batch)
    b2["text_ids"] = batch["text_ids"].clone()
    b2["text_ids"][0, -1] = (batch["text_ids"][0, -1] + 1) % 200
    _, kv2, _ = policy._run_backbone(b2, with_targets=True)
    assert not torch.allclose(kv1[-1][0][:, :, 0], kv2[-1][0][:, :, 0])
    b3 = dict(batch)
    n = int(batch["target_valid"][0].sum())
    b3["target_ids"] = batch["target_ids"].clone()
    b3["target_ids"][0, n - 1] = (batch["target_ids"][0, n - 1] + 7) % cfg.text.vocab_size
    h3, _, _ = policy._run_backbone(b3, with_targets=True)
    lp = batch["text_ids"].shape[1] + cfg.num_image_tokens
    torch.testing.assert_close(h1[:, : lp + n - 1], h3[:, : lp + n - 1], atol=1e-6, rtol=0)
    assert not torch.allclose(h1[:, lp + n - 1], h3[:, lp + n - 1])


# ---- inference -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["ki", "joint", "pi0", "frozen"])
def test_cached_prefix_equals_uncached(cfg, variant):
    """Tolerance 1e-5 absolute: both paths run the same float32 ops, only the cache reuse differs."""
    policy = make(cfg, variant).eval()
    batch = policy.example_batch(2)
    noise = torch.randn(2, cfg.horizon, cfg.max_action_dim, generator=torch.Generator().manual_seed(5))
    a = policy.sample_actions(batch, num_steps=10, noise=noise, use_cache=True)
    b = policy.sample_actions(batch, num_steps=10, noise=noise, use_cache=False)
    assert a.shape == (2, cfg.horizon, cfg.action_dim)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_sample_actions_real_units_use_stats(cfg):
    policy = make(cfg, "ki").eval()
    batch = policy.example_batch(1)
    noise = torch.randn(1, cfg.horizon, cfg.max_action_dim, generator=torch.Generator().manual_seed(0))
    normalized = policy.sample_actions(batch, noise=noise, normalized=True)
    policy.set_normalizer(Normalizer({"observation.state": {"q01": [-1.0] * 14, "q99": [1.0] * 14},
                                      "action": {"q01": [0.0] * 14, "q99": [4.0] * 14}}))
    real = policy.sample_actions(batch, noise=noise)
    torch.testing.assert_close(real, (normalized + 1) * 2.0, atol=1e-5, rtol=0)


def test_delta_actions_are_relative_to_the_observation_state(cfg):
    """A delta-action model's chunk is the observation's state plus what it samples, on every dim but the
    absolute ones (grippers); the processor's conversion round-trips and needs the state."""
    delta = dataclasses.replace(cfg, delta_actions=True, absolute_action_dims=(6, 13))
    policy = make(delta, "ki").eval()
    policy.set_normalizer(Normalizer({"observation.state": {"q01": [-2.0] * 14, "q99": [2.0] * 14},
                                      "action": {"q01": [-0.5] * 14, "q99": [0.5] * 14}}))
    batch = policy.example_batch(2)
    noise = torch.randn(2, cfg.horizon, cfg.max_action_dim, generator=torch.Generator().manual_seed(0))
    model_units = policy.sample_actions(batch, noise=noise, normalized=True)
    real = policy.sample_actions(batch, noise=noise)
    state = batch["state"] * 2.0  # the normalized state back in real units (q01/q99 = -2/2)
    mask = torch.ones(14)
    mask[[6, 13]] = 0.0
    torch.testing.assert_close(real, model_units * 0.5 + state[:, None, :] * mask, atol=1e-5, rtol=0)
    proc = policy.processor
    chunk = np.random.default_rng(0).uniform(-1, 1, (cfg.horizon, 14)).astype(np.float32)
    raw_state = np.linspace(-1, 1, 14, dtype=np.float32)
    norm = proc.normalize_actions(chunk, raw_state)
    np.testing.assert_allclose(norm[:, 6], chunk[:, 6] / 0.5, atol=1e-6)  # a gripper stays absolute
    np.testing.assert_allclose(norm[:, 0], (chunk[:, 0] - raw_state[0]) / 0.5, atol=1e-6)
    np.testing.assert_allclose(proc.unnormalize_actions(norm, raw_state), chunk, atol=1e-6)
    with pytest.raises(ValueError, match="needs the observation's state"):
        proc.normalize_actions(chunk)
    with pytest.raises(ValueError, match="state_dim == action_dim"):
        dataclasses.replace(cfg, delta_actions=True, state_dim=12)
    with pytest.raises(ValueError, match="absolute_action_dims"):
        dataclasses.replace(cfg, delta_actions=True, absolute_action_dims=(14,))


def test_pi0_fast_decodes_chunks(cfg, fast_tok):
    policy = make(cfg, "pi0_fast", fast_tokenizer=fast_tok).eval()
    assert policy.expert is None
    batch = policy.example_batch(2)
    out = policy.compute_loss(batch)
    assert out["flow"] == 0 and out["ce"] > 0
    actions = policy.sample_actions(batch)
    assert actions.shape == (2, cfg.horizon, cfg.action_dim)
    assert torch.isfinite(actions).all()


def test_pi0_fast_learns_to_emit_a_decodable_chunk(cfg, fast_tok):
    """After overfitting one chunk, greedy decoding reproduces it through the FAST tokenizer."""
    policy = make(cfg, "pi0_fast", fast_tokenizer=fast_tok)
    t = np.linspace(0, 1, 50)[:, None]
    chunk = (0.6 * np.sin(2 * np.pi * (0.5 * t + np.linspace(0, 1, 14)[None]))).astype(np.float32)
    s = cfg.image_size
    sample = {"images": {c: np.full((s, s, 3), 100, np.uint8) for c in cfg.camera_names},
              "state": np.zeros(14, np.float32), "instruction": "wave", "actions": chunk}
    batch = policy.processor([sample])
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(120):
        opt.zero_grad()
        policy.compute_loss(batch)["loss"].backward()
        opt.step()
    policy.eval()
    decoded = policy.sample_actions(batch)[0].numpy()
    assert np.sqrt(np.mean((decoded - chunk) ** 2)) < 0.05


def test_overfit_one_batch(cfg):
    """A tiny ki model drives its total loss down by more than 10x on one fixed batch (fixed flow noise)."""
    policy = make(cfg, "ki")
    batch = policy.example_batch(2)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = last = None
    for step in range(200):
        opt.zero_grad()
        out = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
        last = out["loss"].item()
    assert last < first / 10, (first, last)


def test_vlm_samples_contribute_ce_only(cfg):
    policy = make(cfg, "ki")
    batch = policy.example_batch(3, vlm_samples=1)
    assert not batch["action_valid"][2].any() and batch["target_valid"][2].any()
    other = dict(batch)
    other["actions"] = batch["actions"].clone()
    other["actions"][2] = 100.0  # garbage actions on the action-free sample must not matter
    a = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    b = policy.compute_loss(other, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["flow"], b["flow"]) and torch.equal(a["ce"], b["ce"])


# ---- checkpoints ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip(cfg, fast_tok, tmp_path, variant):
    policy = make(cfg, variant, fast_tokenizer=fast_tok).eval()
    policy.set_normalizer(Normalizer({"observation.state": {"q01": [-2.0] * 14, "q99": [2.0] * 14},
                                      "action": {"q01": [-0.5] * 14, "q99": [1.5] * 14}}))
    batch = policy.example_batch(2)
    a = policy.sample_actions(batch, generator=torch.Generator().manual_seed(7))
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = KIPolicy.from_pretrained(tmp_path / "ckpt")
    assert loaded.cfg == policy.cfg
    b = loaded.sample_actions(batch, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    # overwriting an existing checkpoint is atomic and leaves no temp folders behind
    policy.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_from_pretrained_rejects_bad_folders(cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a ki_vla checkpoint"):
        KIPolicy.from_pretrained(tmp_path)
    policy = make(cfg, "ki")
    policy.save_pretrained(tmp_path / "ck")
    with pytest.raises(ValueError, match="does not match"):
        KIPolicy.from_pretrained(tmp_path / "ck",
                                 expert={"hidden_size": 48, "intermediate_size": 64, "time_conditioning": "adarms"})


def test_load_yaml_warns_random(tmp_path):
    with pytest.warns(UserWarning, match="RANDOMLY INITIALIZED"):
        policy = KIPolicy.load(TINY)
    with pytest.raises(FileNotFoundError):
        KIPolicy.load(tmp_path / "nope")
    assert policy.cfg.variant == "ki"


def test_predict_observation(cfg):
    from ki_vla.observation import Observation

    policy = make(cfg, "ki").eval()
    obs = Observation(images={c: np.zeros((48, 64, 3), np.uint8) for c in cfg.camera_names},
                      state=np.zeros(14, np.float32), instruction="transfer the red cube")
    chunk = policy.predict(obs)
    assert chunk.shape == (cfg.horizon, cfg.action_dim) and chunk.dtype == np.float32
    obs.images.pop("cam_high")
    with pytest.raises(ValueError, match="missing camera"):
        policy.predict(obs)


# ---- config -----------------------------------------------------------------------------------------
def test_config_validation(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("variant: nope\n")
    with pytest.raises(ValueError, match="variant"):
        PolicyConfig.from_yaml(p)
    p.write_text("hidden: 3\n")
    with pytest.raises(ValueError, match="unknown key"):
        PolicyConfig.from_yaml(p)
    with pytest.raises(FileNotFoundError):
        PolicyConfig.from_yaml(tmp_path / "missing.yaml")
    cfg = PolicyConfig.from_yaml(TINY)
    assert PolicyConfig.from_dict(cfg.to_dict()) == cfg


# ---- the real pretrained backbone -------------------------------------------------------------------
def test_smol_loads_pretrained_smollm2():
    """The smol config's text model is the real SmolLM2-135M (it knows facts), the policy runs end to end."""
    from ki_vla.model.attention import block_causal_mask, positions_from_valid

    policy = KIPolicy(PolicyConfig.from_yaml("config/model/smol.yaml")).eval()
    tok = policy.processor.text_tokenizer
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    valid = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        hidden, _ = policy.backbone(policy.backbone.embed_tokens(ids), block_causal_mask(valid, torch.ones_like(ids)),
                                    positions_from_valid(valid))
    assert tok.decode(policy.backbone.logits(hidden[:, -1]).argmax(-1)).strip() == "Paris"
    assert sum(p.numel() for p in policy.backbone.language_model.parameters()) == 134_515_008
    actions = policy.sample_actions(policy.example_batch(1), num_steps=2)
    assert actions.shape == (1, 50, 14) and torch.isfinite(actions).all()


def test_info_cli(capsys):
    from ki_vla.cli import main

    assert main(["info", "--model", TINY, "--variant", "frozen"]) == 0
    out = capsys.readouterr().out
    assert "language model" in out and "action expert" in out and "frozen" in out


def test_processor_fits_images_like_the_camera_node(cfg):
    """Training/eval frames and live frames go through the same resize (ki_vla.data.images.resize_for_model)."""
    from ki_vla.data.images import resize_for_model

    policy = make(cfg, "ki")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
    sample = {"images": {c: img for c in cfg.camera_names}, "state": np.zeros(14, np.float32), "instruction": "x"}
    got = policy.processor([sample], with_targets=False)["images"][0, 0].numpy()
    want = resize_for_model(img, cfg.image_size, cfg.image_resize).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert cfg.image_resize == "pad" and (got[:, 0] == -1.0).all()  # black padding rows above the wide image


# ---- padding trimming ------------------------------------------------------------------------------
def test_trim_padding_keeps_every_used_column():
    from ki_vla.model.processing import trim_padding

    text_valid = torch.zeros(2, 40, dtype=torch.bool)
    text_valid[0, 25:], text_valid[1, 19:] = True, True  # left-padded prompts of 15 and 21 tokens
    target_valid = torch.zeros(2, 30, dtype=torch.bool)
    target_valid[0, :3], target_valid[1, :9] = True, True  # right-padded targets
    batch = {"text_ids": torch.arange(80).view(2, 40), "text_valid": text_valid,
             "target_ids": torch.arange(60).view(2, 30), "target_valid": target_valid}
    out = trim_padding(batch)
    assert out["text_ids"].shape == (2, 24) and out["target_ids"].shape == (2, 16)  # 21 -> 24, 9 -> 16
    assert out["text_valid"].sum() == 36 and out["target_valid"].sum() == 12
    torch.testing.assert_close(out["text_ids"], batch["text_ids"][:, 16:])
    no_targets = trim_padding({**batch, "target_valid": torch.zeros_like(target_valid)})
    assert no_targets["target_ids"].shape == (2, 8)
    assert trim_padding(batch, multiple=64)["text_ids"].shape == (2, 40)  # never more than the budget


@pytest.mark.parametrize("variant", ["ki", "pi0", "pi0_fast"])
def test_trimmed_padding_gives_the_same_loss_and_gradients(cfg, variant, monkeypatch):
    """compute_loss trims the batch; the full-budget batch through an untrimmed forward must agree."""
    from ki_vla.model import policy as policy_mod

    batch = make(cfg, variant).example_batch(3, seed=2, vlm_samples=1)
    assert batch["text_ids"].shape[1] == cfg.max_text_tokens  # the batch really is padded to the budget

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        policy = make(cfg, variant)
        out = policy(batch, generator=torch.Generator().manual_seed(0))
        out["loss"].backward()
        return out["loss"].detach(), grads(policy)

    loss_a, grads_a = loss_and_grads()
    monkeypatch.setattr(policy_mod, "trim_padding", lambda b, multiple=8: b)
    loss_b, grads_b = loss_and_grads()
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("heads,kv_heads", [(8, 1), (9, 3), (4, 4)])
def test_grouped_query_attention_equals_expanded_heads(heads, kv_heads):
    from ki_vla.model.attention import attend, sdpa_mask

    torch.manual_seed(0)
    q, k, v = torch.randn(2, heads, 5, 16), torch.randn(2, kv_heads, 9, 16), torch.randn(2, kv_heads, 9, 16)
    mask = torch.rand(2, 5, 9) > 0.4
    mask[..., 0] = True  # every query sees at least one key
    g = heads // kv_heads
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1), attn_mask=mask[:, None])
    torch.testing.assert_close(attend(q, k, v, sdpa_mask(mask, g)), ref.transpose(1, 2).reshape(2, 5, heads * 16),
                               atol=1e-5, rtol=0)


def test_kv_only_prefix_pass_gives_the_same_kv(cfg):
    """The expert's prefix needs each layer's K/V only: the last layer may stop right after them."""
    from ki_vla.model.attention import block_causal_mask, positions_from_valid

    policy = make(cfg, "ki").eval()
    emb, valid = policy._prefix(policy.example_batch(2, seed=4))
    mask = block_causal_mask(valid, torch.zeros_like(valid, dtype=torch.long))
    with torch.no_grad():
        hidden, full = policy.backbone(emb, mask, positions_from_valid(valid))
        none, kv_only = policy.backbone(emb, mask, positions_from_valid(valid), kv_only=True)
    assert hidden is not None and none is None
    for (k1, v1), (k2, v2) in zip(full, kv_only, strict=True):
        torch.testing.assert_close(k1, k2, atol=0, rtol=0)
        torch.testing.assert_close(v1, v2, atol=0, rtol=0)


# ---- padded action dims and the expert's state input -------------------------------------------------------
def _record_expert_inputs(policy: KIPolicy) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    policy.expert.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


def test_padded_action_dims_stay_zero_in_training_and_sampling(cfg):
    """The dims between action_dim and max_action_dim are never supervised: if they carried noise, sampling would
    integrate an untrained velocity there (the drift a review measured at mean |x| 0.95) and feed it back."""
    from ki_vla.infer.engine import InferenceEngine

    assert cfg.max_action_dim > cfg.action_dim
    policy = make(cfg, "ki")
    seen = _record_expert_inputs(policy)
    policy.compute_loss(policy.example_batch(2))
    assert len(seen) == 1 and bool((seen[0][..., cfg.action_dim:] == 0).all())
    assert bool((seen[0][..., : cfg.action_dim] != 0).any())
    batch = policy.example_batch(1)
    seen.clear()
    full_noise = torch.randn(1, cfg.horizon, cfg.max_action_dim)  # noise on every dim: the padding must be dropped
    ref = policy.sample_actions(batch, num_steps=4, noise=full_noise, normalized=True)
    assert len(seen) == 4 and all(bool((x[..., cfg.action_dim:] == 0).all()) for x in seen)
    seen.clear()
    eng = InferenceEngine(policy, batch_size=1, num_steps=4, fuse=False).sample_actions(batch, noise=full_noise,
                                                                                        normalized=True)
    assert len(seen) == 4 and all(bool((x[..., cfg.action_dim:] == 0).all()) for x in seen)
    torch.testing.assert_close(eng, ref, atol=1e-5, rtol=1e-4)


def test_expert_state_input_reads_the_continuous_state(cfg, tmp_path):
    with_state = dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, state_input=True))
    policy = make(with_state, "ki")
    assert policy.expert.state_proj is not None and make(cfg, "ki").expert.state_proj is None
    batch = policy.example_batch(1)
    assert batch["state"].shape == (1, cfg.state_dim)
    noise = torch.randn(1, cfg.horizon, cfg.max_action_dim)
    a = policy.sample_actions(batch, noise=noise, normalized=True)
    moved = dict(batch, state=batch["state"] + 0.5)
    assert float((policy.sample_actions(moved, noise=noise, normalized=True) - a).abs().max()) > 1e-3
    # the flow gradient trains the state projection (and, insulated, still never the backbone)
    policy.compute_loss(batch)["flow"].backward()
    assert nonzero(grads(policy.expert.state_proj))
    policy.save_pretrained(tmp_path / "ckpt")
    back = KIPolicy.from_pretrained(tmp_path / "ckpt")
    assert back.cfg.expert.state_input
    torch.testing.assert_close(back.sample_actions(batch, noise=noise, normalized=True), a)


def test_rotary_tables_stay_float32_in_bf16_models_and_engines(cfg):
    """Rounded to bf16 the inverse frequencies shift every angle: cos tables off by ~0.18 near position 1000 for the
    tiny model (1.26 at pi05's head_dim). Only the final bf16 rounding of cos/sin may differ (half an ulp: 0.004)."""
    import copy

    from ki_vla.infer.engine import InferenceEngine

    pos = torch.arange(900, 1000)[None]
    torch.manual_seed(0)
    ref = KIPolicy(cfg)
    cos32, sin32 = ref.backbone.rope(pos, torch.empty((), dtype=torch.float32))
    bf16 = KIPolicy(dataclasses.replace(cfg, dtype="bfloat16"))
    engine = InferenceEngine(ref, batch_size=1, dtype=torch.bfloat16, fuse=False)
    for model in (bf16, engine.policy, copy.deepcopy(bf16).to(torch.float16)):
        rotary = model.backbone.language_model.rotary_emb
        assert rotary.inv_freq.dtype == torch.float32 and rotary.original_inv_freq.dtype == torch.float32
        cos, sin = model.backbone.rope(pos, torch.empty((), dtype=torch.bfloat16))
        assert float((cos.float() - cos32).abs().max()) < 8e-3 and float((sin.float() - sin32).abs().max()) < 8e-3
    # what the fix prevents: transformers' own module, cast like any other
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    plain = LlamaRotaryEmbedding(ref.backbone.language_model.config).to(torch.bfloat16)
    cos, _ = plain(torch.empty((), dtype=torch.bfloat16), pos)
    assert float((cos.float() - cos32).abs().max()) > 0.05


def test_fast_tokenizer_larger_than_the_reserved_range_is_refused(cfg, fast_tok):
    small = dataclasses.replace(cfg, fast_vocab_size=fast_tok.vocab_size - 1)
    with pytest.raises(ValueError, match="reserves"):
        KIPolicy(small, fast_tokenizer=fast_tok)
    policy = KIPolicy(small)
    with pytest.raises(ValueError, match="reserves"):
        policy.set_fast_tokenizer(fast_tok)


def test_state_can_stay_out_of_the_prompt(cfg):
    from ki_vla.model.processing import robot_prompt

    assert (robot_prompt("pick", None) == "Task: pick;\nAction: "
            and "State: 1 2" in robot_prompt("pick", np.array([1, 2])))
    no_prompt = dataclasses.replace(cfg, state_in_prompt=False,
                                    expert=dataclasses.replace(cfg.expert, state_input=True))
    policy = KIPolicy(no_prompt)
    sample = {"images": {}, "state": np.full(cfg.state_dim, 0.3, np.float32), "instruction": "transfer the cube"}
    batch = policy.processor([sample], with_targets=False)
    text = policy.processor.text_tokenizer.decode(batch["text_ids"][0][batch["text_valid"][0]].tolist())
    assert "State" not in text and batch["state"].abs().sum() > 0  # the expert still gets the state
    # Without either, the policy reads the arms from its cameras alone (the state never reaches the model).
    blind = KIPolicy(dataclasses.replace(cfg, state_in_prompt=False,
                                         expert=dataclasses.replace(cfg.expert, state_input=False)))
    a = blind.processor([sample], with_targets=False)
    b = blind.processor([dict(sample, state=-sample["state"])], with_targets=False)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(blind.sample_actions(a, generator=gen()), blind.sample_actions(b, generator=gen()))
