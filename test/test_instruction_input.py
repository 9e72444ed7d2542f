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

"""The expert's direct path to the instruction (`expert.instruction_input`): the prompt's mean token embedding."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ki_vla.model.config import PolicyConfig
from ki_vla.model.expert import open_time_gates
from ki_vla.model.policy import KIPolicy


def _policy(variant: str = "ki", keypoints: int = 4) -> KIPolicy:
    base = PolicyConfig.from_yaml("config/model/tiny.yaml")
    cfg = dataclasses.replace(base, variant=variant, vision=dataclasses.replace(base.vision, keypoints=keypoints),
                              expert=dataclasses.replace(base.expert, instruction_input=True, state_input=True,
                                                         keypoint_input=keypoints > 0))
    torch.manual_seed(0)
    policy = KIPolicy(cfg)
    open_time_gates(policy)
    return policy


def _batch(policy: KIPolicy, instructions: list[str]) -> dict[str, torch.Tensor]:
    batch = policy.example_batch(len(instructions))
    rng = np.random.default_rng(0)
    cfg = policy.cfg
    samples = [{"images": {c: rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
                           for c in cfg.camera_names},
                "state": np.zeros(cfg.state_dim, np.float32), "instruction": text} for text in instructions]
    new = policy.processor(samples, with_targets=False)
    return {**batch, **{k: new[k] for k in ("images", "image_valid", "text_ids", "text_valid", "state",
                                            "instruction_ids", "instruction_valid")}}


def test_context_layout_and_padding_invariance():
    policy = _policy()
    cfg = policy.cfg
    assert cfg.expert_context_dim == cfg.state_dim + cfg.text.hidden_size + len(cfg.camera_names) * 4 * 2
    batch = _batch(policy, ["transfer the red cube", "transfer the blue cube"])
    ctx = policy.expert_context(batch)
    instr = ctx[:, cfg.state_dim: cfg.state_dim + cfg.text.hidden_size]
    assert not torch.allclose(instr[0], instr[1])  # one word differs: the expert can tell them apart
    # More padding leaves each instruction's embedding as it was.
    ids, valid = batch["instruction_ids"], batch["instruction_valid"]
    pad = torch.zeros(ids.shape[0], 7, dtype=ids.dtype)
    wider = policy.instruction_embedding(torch.cat([ids, pad], 1), torch.cat([valid, pad.bool()], 1))
    torch.testing.assert_close(wider, instr)
    # The instruction alone: the same instruction under two different states gives the same embedding.
    moved = {**batch, "state": batch["state"] + 0.5}
    again = policy.processor([{"images": {}, "state": np.full(cfg.state_dim, 0.9, np.float32),
                               "instruction": "transfer the red cube"}], with_targets=False)
    torch.testing.assert_close(policy.instruction_embedding(again["instruction_ids"], again["instruction_valid"])[0],
                               policy.instruction_embedding(moved["instruction_ids"], moved["instruction_valid"])[0])


def test_the_flow_loss_reaches_the_token_embeddings_only_without_insulation():
    for variant, reaches in (("ki", False), ("joint", True)):
        policy = _policy(variant, keypoints=0)
        batch = _batch(policy, ["transfer the red cube", "transfer the blue cube"])
        full = policy.example_batch(2)
        batch = {**full, **{k: batch[k] for k in ("text_ids", "text_valid", "instruction_ids", "instruction_valid")}}
        policy.zero_grad()
        policy.compute_loss(batch)["flow"].backward()
        grad = policy.backbone.language_model.embed_tokens.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == reaches, variant
        assert policy.expert.state_proj.weight.grad.abs().sum() > 0


def test_engine_serves_the_instruction_context_like_the_reference():
    from ki_vla.infer.engine import InferenceEngine

    policy = _policy().eval()
    engine = InferenceEngine(policy, batch_size=1, fuse=False)
    noise = torch.randn(1, policy.cfg.horizon, policy.cfg.max_action_dim, generator=torch.Generator().manual_seed(1))
    outs = []
    for text in ("transfer the red cube", "transfer the blue cube"):  # the buffer is refreshed per request
        batch = _batch(policy, [text])
        ref = policy.sample_actions(batch, noise=noise)
        torch.testing.assert_close(engine.sample_actions(batch, noise=noise), ref, atol=1e-5, rtol=0)
        outs.append(ref)
    assert not torch.allclose(outs[0], outs[1])
    with pytest.raises(ValueError):
        PolicyConfig.from_dict({**policy.cfg.to_dict(), "expert": {**dataclasses.asdict(policy.cfg.expert),
                                                                   "instruction_input": "sometimes"}})


def _film_policy() -> KIPolicy:
    base = _policy()
    cfg = dataclasses.replace(base.cfg, expert=dataclasses.replace(base.cfg.expert, instruction_film=True))
    torch.manual_seed(0)
    policy = KIPolicy(cfg)
    open_time_gates(policy)
    return policy


def test_instruction_film_starts_additive_and_learns_a_product():
    policy = _film_policy()
    batch = _batch(policy, ["transfer the red cube", "transfer the blue cube"])
    full = policy.example_batch(2)
    batch = {**full, **{k: batch[k] for k in ("text_ids", "text_valid", "instruction_ids", "instruction_valid")}}
    # A fresh gain is zero: the context is exactly the additive one.
    ctx = policy.expert_context(batch)
    expert = policy.expert.train()
    noisy = torch.zeros(2, policy.cfg.horizon, policy.cfg.max_action_dim)
    tokens = expert._action_tokens(noisy, ctx)
    gain, embed = expert.film_gain, expert.film_keypoints
    expert.film_gain, expert.film_keypoints = None, None
    torch.testing.assert_close(tokens, expert._action_tokens(noisy, ctx))
    expert.film_gain, expert.film_keypoints = gain, embed
    # The flow loss trains the gain (the keypoint embedding's gradient is zero while the gain is), not the backbone.
    policy.zero_grad()
    policy.compute_loss(batch)["flow"].backward()
    assert expert.film_gain.weight.grad.abs().sum() > 0
    # With a gain, the two instructions scale the same keypoints (the same images) differently.
    with torch.no_grad():
        expert.film_gain.weight.normal_(0, 0.5)
    batch["images"] = batch["images"][:1].expand_as(batch["images"]).clone()
    ctx = policy.expert_context(batch)
    n_kp = expert.film_keypoints.in_features
    torch.testing.assert_close(ctx[0, -n_kp:], ctx[1, -n_kp:])
    expert.eval()
    normed = expert._action_tokens(noisy, ctx) - expert.state_proj(
        torch.cat([ctx[:, :policy.cfg.state_dim], expert.keypoint_norm(ctx[:, policy.cfg.state_dim:])], 1))[:, None]
    assert not torch.allclose(normed[0], normed[1])


def test_instruction_film_needs_both_inputs():
    base = PolicyConfig.from_yaml("config/model/tiny.yaml")
    with pytest.raises(ValueError, match="instruction_film needs"):
        dataclasses.replace(base, expert=dataclasses.replace(base.expert, instruction_film=True)).validate()


def test_engine_serves_instruction_film_like_the_reference():
    from ki_vla.infer.engine import InferenceEngine

    policy = _film_policy()
    with torch.no_grad():
        policy.expert.film_gain.weight.normal_(0, 0.5)
    policy.eval()
    engine = InferenceEngine(policy, batch_size=1, fuse=False)
    noise = torch.randn(1, policy.cfg.horizon, policy.cfg.max_action_dim, generator=torch.Generator().manual_seed(1))
    for text in ("transfer the red cube", "transfer the blue cube"):
        batch = _batch(policy, [text])
        torch.testing.assert_close(engine.sample_actions(batch, noise=noise), policy.sample_actions(batch, noise=noise),
                                   atol=1e-5, rtol=0)


def test_keypoint_grad_lets_the_flow_loss_train_the_keypoint_stem_only():
    """`expert.keypoint_grad`: the flow loss reaches the (from-scratch) keypoint stem, still not the backbone's
    pretrained parts (the token embeddings stay insulated); without it, KI keeps the stem out of the flow loss."""
    base = _policy()
    for keypoint_grad in (False, True):
        cfg = dataclasses.replace(base.cfg, expert=dataclasses.replace(base.cfg.expert, keypoint_grad=keypoint_grad))
        torch.manual_seed(0)
        policy = KIPolicy(cfg)
        open_time_gates(policy)
        batch = {**policy.example_batch(2), **{k: v for k, v in _batch(policy, ["a", "b"]).items()
                                               if k in ("instruction_ids", "instruction_valid")}}
        policy.zero_grad()
        policy.compute_loss(batch)["flow"].backward()
        stem = policy.backbone.keypoints.stem[0].weight.grad
        assert (stem is not None and stem.abs().sum() > 0) == keypoint_grad
        emb = policy.backbone.language_model.embed_tokens.weight.grad
        assert emb is None or emb.abs().sum() == 0
    with pytest.raises(ValueError, match="keypoint_grad"):
        PolicyConfig.from_dict({**base.cfg.to_dict(), "expert": {**dataclasses.asdict(base.cfg.expert),
                                                                 "keypoint_input": False, "instruction_film": False,
                                                                 "keypoint_grad": True}})
