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

"""Q/K/V and gated-MLP input projections, in the checkpoint layout or merged for inference.

Checkpoints (transformers, openpi, LeRobot) store q_proj/k_proj/v_proj and gate_proj/up_proj as separate
matrices, and training keeps them so (parameter names map one to one). An inference copy can merge each group into
one matrix (`merge_projections`): one GEMM instead of three (or two) over the same input. For the expert's 50
tokens those GEMMs are small and launch/latency-bound, and a pi0.5-size denoising loop runs 18 layers x 10 steps
of them, so the count matters. The layer code calls `project_qkv` / `gated_mlp`, which serve both layouts.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class QKV(NamedTuple):
    q: torch.Tensor  # (B, Hq, L, D)
    k: torch.Tensor  # (B, Hkv, L, D)
    v: torch.Tensor  # (B, Hkv, L, D)


def project_qkv(attn: nn.Module, h: torch.Tensor, head_dim: int) -> QKV:
    """(B, L, W) -> the heads' queries, keys and values."""
    if hasattr(attn, "qkv_proj"):
        q, k, v = attn.qkv_proj(h).split(attn.qkv_sizes, dim=-1)
    else:
        q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
    shape = (*h.shape[:2], -1, head_dim)
    return QKV(q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2))


def gated_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """down(act(gate(x)) * up(x)) — the Llama/Gemma MLP (transformers' modules and ours share these names)."""
    if hasattr(mlp, "gate_up_proj"):
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
    else:
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    return mlp.down_proj(mlp.act_fn(gate) * up)


def _merge(parent: nn.Module, names: tuple[str, ...], merged: str) -> list[int]:
    parts = [getattr(parent, n) for n in names]
    has_bias = [p.bias is not None for p in parts]
    if any(has_bias) and not all(has_bias):
        raise ValueError(f"cannot merge {names}: some have a bias and some do not")
    w = torch.cat([p.weight.detach() for p in parts], dim=0)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=all(has_bias), device=w.device, dtype=w.dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        if all(has_bias):
            layer.bias.copy_(torch.cat([p.bias.detach() for p in parts]))
    setattr(parent, merged, layer)
    for n in names:
        delattr(parent, n)
    return [p.weight.shape[0] for p in parts]


def merge_projections(layer: nn.Module) -> None:
    """Merge one decoder/expert layer's Q/K/V and gate/up matrices in place (an inference copy only: the merged
    layer no longer has the checkpoint's parameter names)."""
    if not hasattr(layer.self_attn, "qkv_proj"):
        layer.self_attn.qkv_sizes = _merge(layer.self_attn, ("q_proj", "k_proj", "v_proj"), "qkv_proj")
    if not hasattr(layer.mlp, "gate_up_proj"):
        _merge(layer.mlp, ("gate_proj", "up_proj"), "gate_up_proj")
