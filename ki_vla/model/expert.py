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

"""The action expert: a narrow transformer, one layer per backbone layer, over H action tokens.

Each expert layer attends to [prefix K/V of the matching backbone layer ; its own K/V]. The policy
decides whether the prefix K/V arrive detached (KI, frozen) or not (joint, pi0): the expert itself has no
notion of insulation. It uses the backbone's attention head layout (num_heads, num_kv_heads, head_dim),
so its keys and values concatenate with the backbone's without any projection.

Parameter names mirror a transformers Gemma/Llama decoder (`layers.{i}.self_attn.q_proj`, ...,
`layers.{i}.input_layernorm.dense` for adaptive norms) so openpi/LeRobot expert weights map by prefix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ki_vla.model.attention import attend
from ki_vla.model.config import PolicyConfig
from ki_vla.model.projections import gated_mlp, project_qkv

KV = tuple[torch.Tensor, torch.Tensor]


class Modulation(NamedTuple):
    """What adaRMSNorm applies: `x_hat * (1 + scale) + shift`, and `gate` on the residual branch after it; each
    (B, 1, W) float32, or (B, H, W) for per-token flow times."""

    scale: torch.Tensor
    shift: torch.Tensor
    gate: torch.Tensor


@dataclass
class StepConditioning:
    """Everything the flow time contributes to one denoising step, computed once: the inference engine's time
    schedule is fixed, so these are constants of the engine, and each step skips the time MLP and every adaRMS
    `dense` (2 x layers + 1 small GEMMs per step at pi0.5 size).

    norms: adaRMS, per layer (input norm, post-attention norm) modulations; final: the output norm's.
    time_bias: MLP time conditioning (pi0), the time half of action_time_mlp_in plus its bias, (B, 1, W).
    """

    norms: list[tuple[Modulation, Modulation]] | None = None
    final: Modulation | None = None
    time_bias: torch.Tensor | None = None


class RMSNorm(nn.Module):
    """RMSNorm, optionally adaptive (pi0.5's adaRMSNorm).

    Without conditioning: Llama style `w * x_hat` or Gemma style `(1 + w) * x_hat`.
    With conditioning (cond_dim set): no learned weight; a zero-initialized `dense` maps the time
    embedding to (scale, shift, gate): `x_hat * (1 + scale) + shift`, and `gate` scales the residual
    branch that follows. Zero init makes a fresh expert start as a plain pre-norm transformer.
    """

    def __init__(self, dim: int, eps: float, gemma_style: bool, cond_dim: int | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.gemma_style = gemma_style
        if cond_dim is None:
            self.weight = nn.Parameter(torch.zeros(dim) if gemma_style else torch.ones(dim))
            self.dense = None
        else:
            self.dense = nn.Linear(cond_dim, 3 * dim)
            nn.init.zeros_(self.dense.weight)
            nn.init.zeros_(self.dense.bias)

    def modulation(self, cond: torch.Tensor) -> Modulation:
        """(scale, shift, gate), each (B, 1, W) float32, from the time conditioning (B, cond_dim); (B, H, W) from a
        per-token conditioning (B, H, cond_dim) (training-time RTC: the committed prefix is at flow time 0)."""
        out = self.dense(cond)
        return Modulation(*(out[:, None, :] if out.dim() == 2 else out).float().chunk(3, dim=-1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                modulation: Modulation | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """modulation: precomputed `self.modulation(cond)` (the engine's fixed schedule); replaces cond."""
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.dense is None:
            w = self.weight.float()
            return (normed * ((1.0 + w) if self.gemma_style else w)).to(x.dtype), None
        if modulation is None:
            if cond is None:
                raise ValueError("adaptive RMSNorm needs the time conditioning")
            modulation = self.modulation(cond)
        scale, shift, gate = modulation
        return (normed * (1.0 + scale) + shift).to(x.dtype), gate.to(x.dtype)


def open_time_gates(module: nn.Module, weight_std: float = 0.05, bias_mean: float = 0.5, bias_std: float = 0.1) -> None:
    """Random weights for every adaRMS `dense` in `module`. Zero at init is right for training (a fresh expert
    starts as a plain transformer) but closes every residual gate: a random-weight expert then ignores its
    attention and MLP, and tests or benchmarks of those paths would check next to nothing."""
    for m in module.modules():
        if isinstance(m, RMSNorm) and m.dense is not None:
            nn.init.normal_(m.dense.weight, std=weight_std)
            nn.init.normal_(m.dense.bias, mean=bias_mean, std=bias_std)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return x + (y if gate is None else y * gate)


class ExpertAttention(nn.Module):
    def __init__(self, width: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)


class GatedMLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)
        self.act_fn = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gated_mlp(self, x)


class ExpertLayer(nn.Module):
    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        tc, ec = cfg.text, cfg.expert
        gemma = tc.arch == "gemma"
        cond_dim = ec.hidden_size if ec.time_conditioning == "adarms" else None
        self.self_attn = ExpertAttention(ec.hidden_size, tc.num_heads, tc.num_kv_heads, tc.head_dim)
        self.mlp = GatedMLP(ec.hidden_size, ec.intermediate_size, "gelu_pytorch_tanh" if gemma else "silu")
        self.input_layernorm = RMSNorm(ec.hidden_size, tc.rms_norm_eps, gemma, cond_dim)
        self.post_attention_layernorm = RMSNorm(ec.hidden_size, tc.rms_norm_eps, gemma, cond_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, prefix_kv: KV, mask: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, kv_is_buffer: bool = False,
                modulation: tuple[Modulation, Modulation] | None = None) -> torch.Tensor:
        """kv_is_buffer: `prefix_kv` are preallocated (B, Hkv, L_prefix + H, D) buffers holding the prefix; the
        layer writes its own K/V into the tail in place instead of concatenating (the inference engine's path).
        modulation: precomputed adaRMS modulations of the two norms (see StepConditioning)."""
        attn = self.self_attn
        mod_in, mod_post = modulation if modulation is not None else (None, None)
        h, gate = self.input_layernorm(x, cond, mod_in)
        q, k, v = project_qkv(attn, h, attn.head_dim)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if kv_is_buffer:
            keys, values = prefix_kv
            own = keys.shape[2] - k.shape[2]
            keys[:, :, own:].copy_(k)
            values[:, :, own:].copy_(v)
        else:
            keys = torch.cat([prefix_kv[0].to(k.dtype), k], dim=2)
            values = torch.cat([prefix_kv[1].to(v.dtype), v], dim=2)
        x = gated_residual(x, attn.o_proj(attend(q, keys, values, mask)), gate)
        h, gate = self.post_attention_layernorm(x, cond, mod_post)
        return gated_residual(x, self.mlp(h), gate)


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, min_period: float = 4e-3,
                              max_period: float = 4.0) -> torch.Tensor:
    """The time embedding of openpi: periods spaced geometrically between min and max period; (B,) -> (B, dim), or
    per token (B, H) -> (B, H, dim)."""
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.double()[..., None] * (2.0 * math.pi / period)
    return torch.cat([angle.sin(), angle.cos()], dim=-1).float()


class ActionExpert(nn.Module):
    """Noisy action chunk + flow time -> velocity field, reading the backbone's per-layer prefix K/V."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ec, tc = cfg.expert, cfg.text
        width = ec.hidden_size
        self.gradient_checkpointing = False
        self.action_in_proj = nn.Linear(cfg.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, cfg.max_action_dim)
        # The per-sample context [state, instruction embedding, keypoint coordinates] (PolicyConfig.expert_context_dim)
        # on every token.
        self.state_proj = nn.Linear(cfg.expert_context_dim, width) if cfg.expert_context_dim else None
        # The backbone's part of it (instruction embedding and keypoint coordinates; `keypoint_norm` keeps its name
        # for the checkpoints that have it) standardized by running statistics (the state comes normalized by the
        # dataset's).
        # Why: most coordinates move by 0.02-0.2 of their [-1, 1] range across scenes; Adam's steps are the same
        # size whatever an input's scale, so reading a 0.02-std input needs weights ~50x larger, thousands of steps
        # more (measured: the first chunk followed the scene at 10% of the plan's spread after 400 steps on t=0
        # frames alone, unnormalized).
        kp = cfg.expert_context_dim - (cfg.state_dim if ec.state_input else 0)
        self.keypoint_norm = nn.BatchNorm1d(kp, affine=False, momentum=0.01) if kp else None
        # expert.instruction_film: + gain(instruction) * embed(keypoints), both read from the standardized context.
        # The gain starts at zero, so a fresh model is the additive one and the product is learned from there.
        self.film_gain = self.film_keypoints = None
        if ec.instruction_film:
            self.film_gain = nn.Linear(tc.hidden_size, width)
            nn.init.zeros_(self.film_gain.weight)
            nn.init.zeros_(self.film_gain.bias)
            self.film_keypoints = nn.Linear(kp - tc.hidden_size, width)
        if ec.time_conditioning == "adarms":
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
        else:
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)
        self.layers = nn.ModuleList(ExpertLayer(cfg) for _ in range(tc.num_layers))
        cond_dim = width if ec.time_conditioning == "adarms" else None
        self.norm = RMSNorm(width, tc.rms_norm_eps, tc.arch == "gemma", cond_dim)

    def _time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_time_embedding(t, self.cfg.expert.hidden_size).to(self.action_in_proj.weight.dtype)

    def _adarms_cond(self, temb: torch.Tensor) -> torch.Tensor:
        """The time MLP's output: what every adaRMS `dense` reads (B, W)."""
        return nn.functional.silu(self.time_mlp_out(nn.functional.silu(self.time_mlp_in(temb))))

    def _action_tokens(self, noisy_actions: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """(B, H, max_action_dim) -> (B, H, W); with `state_input` / `keypoint_input`, plus the embedding of the
        context `state` (KIPolicy.expert_context) on every token."""
        x = self.action_in_proj(noisy_actions.to(self.action_in_proj.weight.dtype))
        if self.state_proj is None:
            return x
        if state is None:
            raise ValueError("this expert reads a context (expert.state_input / instruction_input / keypoint_input) "
                             "but got none")
        if self.keypoint_norm is not None:
            kp = self.keypoint_norm.num_features
            state = torch.cat([state[:, :-kp], self.keypoint_norm(state[:, -kp:].float()).to(state.dtype)], dim=1)
        state = state.to(x.dtype)
        context = self.state_proj(state)
        if self.film_gain is not None:
            n_kp = self.film_keypoints.in_features
            instruction = state[:, -(n_kp + self.film_gain.in_features): -n_kp]
            context = context + self.film_gain(instruction) * self.film_keypoints(state[:, -n_kp:])
        return x + context[:, None, :]

    def embed(self, noisy_actions: torch.Tensor, t: torch.Tensor,
              state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, H, max_action_dim), (B,) -> action tokens (B, H, W) and the adaRMS conditioning (B, W) or None.
        t may be per token (B, H) (training-time RTC), the conditioning then (B, H, W).
        state: (B, state_dim) normalized, read only with `expert.state_input`."""
        x = self._action_tokens(noisy_actions, state)
        temb = self._time_embedding(t)
        if self.cfg.expert.time_conditioning == "adarms":
            return x, self._adarms_cond(temb)
        mixed = torch.cat([x, (temb[:, None, :] if temb.dim() == 2 else temb).expand_as(x)], dim=-1)
        return self.action_time_mlp_out(nn.functional.silu(self.action_time_mlp_in(mixed))), None

    def step_conditioning(self, t: torch.Tensor) -> StepConditioning:
        """The time-only part of a step at flow time t (B,), for `forward(..., conditioning=...)`."""
        temb = self._time_embedding(t)
        if self.cfg.expert.time_conditioning == "adarms":
            cond = self._adarms_cond(temb)
            return StepConditioning(
                norms=[(layer.input_layernorm.modulation(cond), layer.post_attention_layernorm.modulation(cond))
                       for layer in self.layers],
                final=self.norm.modulation(cond))
        width = self.cfg.expert.hidden_size
        lin = self.action_time_mlp_in
        return StepConditioning(time_bias=nn.functional.linear(temb, lin.weight[:, width:], lin.bias)[:, None, :])

    def forward(self, noisy_actions: torch.Tensor, t: torch.Tensor | None, prefix_kv: list[KV], mask: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, kv_is_buffer: bool = False,
                conditioning: StepConditioning | None = None, state: torch.Tensor | None = None) -> torch.Tensor:
        """mask: `sdpa_mask` of the (B, H, L_prefix + H) bool mask (KIPolicy.expert_inputs builds it once per
        chunk). Returns the predicted velocity (B, H, max_action_dim).
        conditioning: `step_conditioning(t)` computed in advance (then t is not needed): the inference engine's
        fixed schedule. Training passes t instead, and the time MLP and every adaRMS `dense` run inside the forwards
        of the modules that own them, because under FSDP2 (`fully_shard` per layer) a layer's weights are gathered
        only within its own forward (tried: precomputing in training failed `test_torchrun_two_processes_gloo[fsdp]`
        with "mixed torch.Tensor and DTensor").
        state: (B, state_dim) normalized robot state (needed with `expert.state_input`)."""
        if conditioning is None:
            x, cond = self.embed(noisy_actions, t, state)
            mods: list = [None] * len(self.layers)
        else:
            x, cond = self._embed_conditioned(noisy_actions, conditioning, state), None
            mods = conditioning.norms or [None] * len(self.layers)
        for layer, kv, mod in zip(self.layers, prefix_kv, mods, strict=True):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cond, kv, mask, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cond, kv, mask, cos, sin, kv_is_buffer, mod)
        x, _ = self.norm(x, cond, conditioning.final if conditioning is not None else None)
        return self.action_out_proj(x)

    def _embed_conditioned(self, noisy_actions: torch.Tensor, conditioning: StepConditioning,
                           state: torch.Tensor | None) -> torch.Tensor:
        x = self._action_tokens(noisy_actions, state)
        if self.cfg.expert.time_conditioning == "adarms":
            return x
        # [x ; temb] @ W_in^T + b  ==  x @ W_in[:, :W]^T + (temb @ W_in[:, W:]^T + b), the bracket precomputed
        width = self.cfg.expert.hidden_size
        h = nn.functional.linear(x, self.action_time_mlp_in.weight[:, :width]) + conditioning.time_bias
        return self.action_time_mlp_out(nn.functional.silu(h))
