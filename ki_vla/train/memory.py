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

"""`ki-vla train --dry-run`: parameter counts and a memory estimate before any GPU is touched.

The model is built on the meta device (no memory, seconds even for pi0.5), so the counts are exact; the memory
figure is an estimate from standard accounting (weights, gradients, AdamW's two moments, EMA copy, activations).
"""
from __future__ import annotations

import dataclasses

import torch

from ki_vla.model.config import PolicyConfig
from ki_vla.model.policy import KIPolicy
from ki_vla.paths import resolve
from ki_vla.train.config import TrainConfig

GiB = 1024**3


@dataclasses.dataclass
class MemoryEstimate:
    trainable: int
    frozen: int
    rows: list[tuple[str, float]]  # (what, GiB)

    @property
    def total_gib(self) -> float:
        return sum(g for _, g in self.rows)


def activation_bytes(pcfg: PolicyConfig, batch: int, checkpointing: bool, bytes_per: int) -> float:
    """Saved activations for backward. Per layer and token a pre-norm decoder keeps roughly the layer input,
    norms, q/k/v/attention output and the MLP's three intermediates: ~(6 * width + 3 * mlp) values. With
    gradient checkpointing only each layer's input is kept (plus one layer recomputed at a time)."""
    tc, ec, vc = pcfg.text, pcfg.expert, pcfg.vision
    seq = pcfg.prefix_len + pcfg.max_target_tokens
    per_tok_bb = 6 * tc.hidden_size + 3 * tc.intermediate_size
    per_tok_ex = 6 * ec.hidden_size + 3 * ec.intermediate_size
    vis_tok = (vc.image_size // vc.patch_size) ** 2 * len(pcfg.camera_names)
    per_tok_vis = 6 * vc.hidden_size + 2 * vc.intermediate_size
    if checkpointing:
        layers = (tc.num_layers * (seq * tc.hidden_size + pcfg.horizon * ec.hidden_size) + seq * per_tok_bb
                  + pcfg.horizon * per_tok_ex)
        vision = vc.num_layers * vis_tok * per_tok_vis  # the vision tower is not checkpointed
    else:
        layers = tc.num_layers * (seq * per_tok_bb + pcfg.horizon * per_tok_ex)
        vision = vc.num_layers * vis_tok * per_tok_vis
    logits = pcfg.max_target_tokens * tc.vocab_size * 4  # fp32 logits of the CE positions
    return batch * ((layers + vision) * bytes_per + logits)


def estimate(cfg: TrainConfig) -> tuple[PolicyConfig, MemoryEstimate]:
    path = resolve(cfg.model)
    pcfg = PolicyConfig.from_yaml(path / "config.yaml" if path.is_dir() else path)
    if cfg.variant:
        pcfg = dataclasses.replace(pcfg, variant=cfg.variant)
    # Meta-device parameter counting: no weights and no token ids are read, so no tokenizer is needed.
    pcfg = dataclasses.replace(pcfg, text=dataclasses.replace(pcfg.text, pretrained=None, tokenizer="bytes-benchmark"))
    with torch.device("meta"):
        policy = KIPolicy(pcfg)
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in policy.parameters() if not p.requires_grad)
    model_bytes = 2 if pcfg.dtype == "bfloat16" else 4
    master = "float32" if cfg.master_weights == "float32" else pcfg.dtype
    wbytes = 4 if master == "float32" else model_bytes  # trainable weights, gradients, AdamW state, EMA
    bf16_compute = cfg.precision != "fp32"  # the estimate is for a GPU, where "auto" means bf16 autocast
    rows = [
        (f"trainable weights ({master})", trainable * wbytes / GiB),
        (f"frozen weights ({master})", frozen * wbytes / GiB),
        (f"gradients ({master})", trainable * wbytes / GiB),
        (f"AdamW moments (2 x {master})", 2 * trainable * wbytes / GiB),
    ]
    if bf16_compute and wbytes == 4:
        # autocast keeps a bf16 copy of each weight a forward pass casts (freed after the step)
        rows.append(("bf16 weight casts under autocast", (trainable + frozen) * 2 / GiB))
    if cfg.ema_decay is not None:
        rows.append((f"EMA copy ({master})", (trainable + frozen) * wbytes / GiB))
    act = activation_bytes(pcfg, cfg.batch_size, cfg.gradient_checkpointing, 2 if bf16_compute else 4)
    rows.append((f"activations (batch {cfg.batch_size}, checkpointing "
                 f"{'on' if cfg.gradient_checkpointing else 'off'})", act / GiB))
    return pcfg, MemoryEstimate(trainable, frozen, rows)


def report(cfg: TrainConfig) -> str:
    pcfg, est = estimate(cfg)
    lines = [f"model {cfg.model}  variant={pcfg.variant}  dtype={pcfg.dtype}  master_weights={cfg.master_weights}",
             f"parameters: trainable {est.trainable:,}  frozen {est.frozen:,}  total {est.trainable + est.frozen:,}",
             "estimated peak memory per process:"]
    lines += [f"  {what:<58}{gib:8.2f} GiB" for what, gib in est.rows]
    lines.append(f"  {'total':<58}{est.total_gib:8.2f} GiB")
    return "\n".join(lines)
