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

"""The pi0.5 key map loads a LeRobot-format state dict, tested at tiny size with the real key names."""
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from ki_vla import KIPolicy, PolicyConfig
from ki_vla.model.checkpoint_map import load_lerobot_pi05, map_lerobot_pi05_keys

P = "paligemma_with_expert.paligemma.model"
E = "paligemma_with_expert.gemma_expert.model"


def tiny_pi05() -> PolicyConfig:
    cfg = PolicyConfig.from_yaml("config/model/pi05.yaml")
    return dataclasses.replace(
        cfg, dtype="float32", max_text_tokens=64, max_target_tokens=64,
        vision=dataclasses.replace(cfg.vision, image_size=28, patch_size=14, hidden_size=32, num_layers=2, num_heads=2,
                                   intermediate_size=48),
        text=dataclasses.replace(cfg.text, tokenizer="bytes", vocab_size=1536, hidden_size=64, num_layers=2,
                                 num_heads=4, num_kv_heads=1, head_dim=16, intermediate_size=96),
        expert=dataclasses.replace(cfg.expert, hidden_size=32, intermediate_size=48))


def lerobot_state_dict(cfg: PolicyConfig, prefix: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Key names written out from the LeRobot/openpi pi0.5 layout (not derived from our own names)."""
    v, t, e = cfg.vision, cfg.text, cfg.expert
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    sd: dict[str, torch.Tensor] = {}
    vt = f"{P}.vision_tower.vision_model"
    n_patches = (v.image_size // v.patch_size) ** 2
    sd[f"{vt}.embeddings.patch_embedding.weight"] = r(v.hidden_size, 3, v.patch_size, v.patch_size)
    sd[f"{vt}.embeddings.patch_embedding.bias"] = r(v.hidden_size)
    sd[f"{vt}.embeddings.position_embedding.weight"] = r(n_patches, v.hidden_size)
    for i in range(v.num_layers):
        base = f"{vt}.encoder.layers.{i}"
        for ln in ("layer_norm1", "layer_norm2"):
            sd[f"{base}.{ln}.weight"], sd[f"{base}.{ln}.bias"] = r(v.hidden_size), r(v.hidden_size)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{base}.self_attn.{proj}.weight"], sd[f"{base}.self_attn.{proj}.bias"] = (
                r(v.hidden_size, v.hidden_size), r(v.hidden_size))
        sd[f"{base}.mlp.fc1.weight"], sd[f"{base}.mlp.fc1.bias"] = (
            r(v.intermediate_size, v.hidden_size), r(v.intermediate_size))
        sd[f"{base}.mlp.fc2.weight"], sd[f"{base}.mlp.fc2.bias"] = (
            r(v.hidden_size, v.intermediate_size), r(v.hidden_size))
    sd[f"{vt}.post_layernorm.weight"], sd[f"{vt}.post_layernorm.bias"] = r(v.hidden_size), r(v.hidden_size)
    sd[f"{P}.multi_modal_projector.linear.weight"] = r(t.hidden_size, v.hidden_size)
    sd[f"{P}.multi_modal_projector.linear.bias"] = r(t.hidden_size)
    # tied embedding: safetensors keeps only lm_head
    sd["paligemma_with_expert.paligemma.lm_head.weight"] = r(t.vocab_size, t.hidden_size)
    for stack, width, inter, adaptive in ((f"{P}.language_model", t.hidden_size, t.intermediate_size, False),
                                          (E, e.hidden_size, e.intermediate_size, True)):
        for i in range(t.num_layers):
            base = f"{stack}.layers.{i}"
            sd[f"{base}.self_attn.q_proj.weight"] = r(t.num_heads * t.head_dim, width)
            sd[f"{base}.self_attn.k_proj.weight"] = r(t.num_kv_heads * t.head_dim, width)
            sd[f"{base}.self_attn.v_proj.weight"] = r(t.num_kv_heads * t.head_dim, width)
            sd[f"{base}.self_attn.o_proj.weight"] = r(width, t.num_heads * t.head_dim)
            sd[f"{base}.mlp.gate_proj.weight"] = r(inter, width)
            sd[f"{base}.mlp.up_proj.weight"] = r(inter, width)
            sd[f"{base}.mlp.down_proj.weight"] = r(width, inter)
            for ln in ("input_layernorm", "post_attention_layernorm"):
                if adaptive:
                    sd[f"{base}.{ln}.dense.weight"], sd[f"{base}.{ln}.dense.bias"] = r(3 * width, width), r(3 * width)
                else:
                    sd[f"{base}.{ln}.weight"] = r(width)
        if adaptive:
            sd[f"{stack}.norm.dense.weight"], sd[f"{stack}.norm.dense.bias"] = r(3 * width, width), r(3 * width)
        else:
            sd[f"{stack}.norm.weight"] = r(width)
    sd["paligemma_with_expert.gemma_expert.lm_head.weight"] = r(t.vocab_size, e.hidden_size)  # junk, dropped
    sd["action_in_proj.weight"], sd["action_in_proj.bias"] = r(e.hidden_size, cfg.max_action_dim), r(e.hidden_size)
    sd["action_out_proj.weight"], sd["action_out_proj.bias"] = (
        r(cfg.max_action_dim, e.hidden_size), r(cfg.max_action_dim))
    for name in ("time_mlp_in", "time_mlp_out"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = r(e.hidden_size, e.hidden_size), r(e.hidden_size)
    return {prefix + k: val for k, val in sd.items()}


@pytest.mark.parametrize("prefix", ["", "model."])
def test_lerobot_pi05_state_dict_loads(tmp_path, prefix):
    cfg = tiny_pi05()
    sd = lerobot_state_dict(cfg, prefix, torch.Generator().manual_seed(0))
    save_file(sd, str(tmp_path / "model.safetensors"))
    policy = KIPolicy(cfg)
    load_lerobot_pi05(policy, tmp_path)
    own = policy.state_dict()
    lm = "paligemma_with_expert.paligemma.model.language_model"
    assert torch.equal(own["backbone.language_model.layers.1.self_attn.k_proj.weight"],
                       sd[f"{prefix}{lm}.layers.1.self_attn.k_proj.weight"])
    assert torch.equal(own["backbone.language_model.embed_tokens.weight"],
                       sd[f"{prefix}paligemma_with_expert.paligemma.lm_head.weight"])
    assert torch.equal(own["expert.layers.0.input_layernorm.dense.weight"],
                       sd[f"{prefix}{E}.layers.0.input_layernorm.dense.weight"])
    assert torch.equal(own["backbone.vision_tower.encoder.layers.1.mlp.fc2.bias"],
                       sd[f"{prefix}{P}.vision_tower.vision_model.encoder.layers.1.mlp.fc2.bias"])
    assert torch.equal(own["expert.time_mlp_out.bias"], sd[f"{prefix}time_mlp_out.bias"])
    actions = policy.eval().sample_actions(policy.example_batch(1), num_steps=2)
    assert torch.isfinite(actions).all()


def test_map_rejects_pi0_and_unknown_keys(tmp_path):
    cfg = tiny_pi05()
    sd = lerobot_state_dict(cfg, "", torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="pi0 checkpoint"):
        map_lerobot_pi05_keys({**sd, "state_proj.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not part of the pi0.5 layout"):
        map_lerobot_pi05_keys({**sd, "something.else": torch.zeros(1)})
    sd.pop(f"{E}.layers.1.mlp.up_proj.weight")
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        load_lerobot_pi05(KIPolicy(cfg), tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        load_lerobot_pi05(KIPolicy(cfg), tmp_path / "nope")


def test_pi05_refuses_byte_token_ids():
    """pi0.5's 257k-id embedding was trained on Gemma token ids: byte ids there are silently wrong inputs."""
    from types import SimpleNamespace

    cfg = PolicyConfig.from_yaml("config/model/pi05.yaml")
    with pytest.raises(ValueError, match="PaliGemma"):
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tokenizer="bytes"))
    with pytest.raises(ValueError, match="needs the tokenizer it was trained with"):
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tokenizer="bytes", vocab_size=1536,
                                                          pretrained="smollm2-gguf"))
    timing = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tokenizer="bytes-benchmark"))
    with pytest.raises(ValueError, match="Gemma token ids"):
        load_lerobot_pi05(SimpleNamespace(cfg=timing), "unused.safetensors")
