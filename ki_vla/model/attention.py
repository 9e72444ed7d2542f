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

"""Masks, positions and attention shared by the backbone and the expert.

Shapes follow openpi: masks are boolean (B, Lq, Lk), True = may attend. Keys/values are kept in the
grouped-query layout (B, num_kv_heads, L, head_dim) and never expanded to all query heads (see `attend`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def block_causal_mask(valid: torch.Tensor, new_block: torch.Tensor) -> torch.Tensor:
    """Attention mask from per-token validity and block starts.

    valid: (B, L) bool, False for padding. new_block: (B, L) int/bool, 1 where a token starts a new
    causal block (0 = same block as the previous token). Token i sees token j iff j's block index
    <= i's. So a run of zeros is bidirectional (the prefix) and a run of ones is causal (FAST tokens).
    Padding rows see themselves only, so softmax never meets an all-masked row.
    """
    blocks = torch.cumsum(new_block.long(), dim=1)
    mask = (blocks[:, None, :] <= blocks[:, :, None]) & valid[:, None, :] & valid[:, :, None]
    eye = torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)[None]
    return mask | (eye & ~valid[:, :, None])


def positions_from_valid(valid: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """The RoPE positions that skip padding: position = number of valid tokens before (plus offset)."""
    pos = torch.cumsum(valid.long(), dim=1) - 1
    pos = pos.clamp(min=0)
    if offset is not None:
        pos = pos + offset[:, None]
    return pos


def sdpa_mask(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Lq, Lk) bool -> the attention mask `attend` takes: (B, 1, groups * Lq, Lk), the query rows repeated
    once per query head sharing a K/V head (see `attend`). Every layer of a pass shares one mask, so callers
    build it once per pass (the expert's once per chunk), not once per layer."""
    b, lq, lk = mask.shape
    if groups == 1:
        return mask[:, None]
    return mask[:, None, None].expand(b, 1, groups, lq, lk).reshape(b, 1, groups * lq, lk)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
    """q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D); attn_mask: `sdpa_mask(mask, Hq // Hkv)` -> (B, Lq, Hq * D).

    Grouped-query attention without expanding K/V: the G = Hq / Hkv query heads that share a K/V head are folded
    into the query axis, (B, Hkv, G * Lq, D), which is plain attention with Hkv heads. SDPA's own `enable_gqa`
    would do the same job, but on CUDA it only reaches the flash kernel (no arbitrary masks, and ours are never
    plain causal) or the math fallback, which materializes the scores in float32; folded, a masked GQA call runs on
    the memory-efficient kernel, and each K/V tile is read once per group instead of once per query head.
    """
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    # query head h reads K/V head h // G (transformers' repeat_kv order), so the fold is a reshape
    out = F.scaled_dot_product_attention(q.reshape(b, hkv, (hq // hkv) * lq, d), k, v, attn_mask=attn_mask)
    return out.view(b, hq, lq, d).transpose(1, 2).reshape(b, lq, hq * d)
