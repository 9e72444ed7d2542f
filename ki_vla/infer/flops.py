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

"""The arithmetic and memory-traffic floor of one inference, computed from a config.

Counted (multiply-add = 2 FLOPs): every linear layer of the vision tower, projector, language model (prefix
tokens; of its last layer only the K/V projections, all the expert reads) and expert (H tokens x denoising
steps), plus attention scores and weighted sums (QK^T and PV).
Bytes: weights read once per pass (the expert's once per denoising step: at pi0.5 size they do not fit in
L2), plus the expert's reads of the prefix K/V cache at every step. Norms, RoPE and softmax are left out:
they are a few percent. The floor time is max(FLOPs / peak FLOP/s, bytes / bandwidth) on a named GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from ki_vla.model.config import PolicyConfig

# Dense bf16 tensor-core peak and HBM bandwidth (vendor datasheets, SXM parts).
GPU_PEAKS = {
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "A100": (312e12, 2.0e12),
    "RTX 4090": (165e12, 1.0e12),
}


@dataclass
class Floor:
    flops: dict[str, float]
    bytes: dict[str, float]

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    @property
    def total_bytes(self) -> float:
        return sum(self.bytes.values())

    def time_ms(self, peak_flops: float, bandwidth: float) -> dict[str, float]:
        out = {k: 1e3 * max(self.flops[k] / peak_flops, self.bytes[k] / bandwidth) for k in self.flops}
        out["total"] = sum(out.values())
        return out


def _decoder(tokens: int, ctx: int, width: int, mlp: int, layers: int, heads: int, kv_heads: int,
             head_dim: int) -> tuple[float, float]:
    """(FLOPs, weight parameters) of `layers` gated-MLP decoder layers over `tokens` attending to `ctx` keys."""
    proj = width * head_dim * (heads + 2 * kv_heads) + heads * head_dim * width
    params = layers * (proj + 3 * width * mlp)
    attn = layers * 4 * tokens * ctx * heads * head_dim
    return 2.0 * tokens * params + attn, float(params)


def _vision(cfg: PolicyConfig) -> tuple[float, float]:
    """(FLOPs for all cameras of one sample, weight parameters) of the vision tower (patch embedding + encoder)
    and its projector into the language model."""
    vc = cfg.vision
    patches = (vc.image_size // vc.patch_size) ** 2
    tower = (vc.num_layers * (4 * vc.hidden_size**2 + 2 * vc.hidden_size * vc.intermediate_size)
             + 3 * vc.patch_size**2 * vc.hidden_size)
    projector = vc.hidden_size * (vc.scale_factor**2 if vc.arch == "idefics3" else 1) * cfg.text.hidden_size
    per_image = (2.0 * patches * tower + vc.num_layers * 4 * patches * patches * vc.hidden_size
                 + 2.0 * vc.tokens_per_image * projector)
    keypoints = 0.0
    if vc.keypoints:  # conv stem at every pixel, then the coordinates' projection to one token
        stem = 27 * vc.keypoint_channels + 9 * vc.keypoint_channels * vc.keypoints
        keypoints = stem + 2 * vc.keypoints * cfg.text.hidden_size
        per_image += 2.0 * vc.image_size**2 * stem + 2.0 * 2 * vc.keypoints * cfg.text.hidden_size
    return len(cfg.camera_names) * per_image, float(tower + projector + keypoints)


def inference_floor(cfg: PolicyConfig, batch_size: int = 1, num_steps: int | None = None,
                    bytes_per_param: int = 2) -> Floor:
    steps = num_steps or cfg.num_flow_steps
    tc, ec = cfg.text, cfg.expert
    vis_flops, vis_params = _vision(cfg)
    lp = cfg.num_image_tokens + cfg.max_text_tokens
    pre_flops, lm_params = _decoder(lp, lp, tc.hidden_size, tc.intermediate_size, tc.num_layers - 1, tc.num_heads,
                                    tc.num_kv_heads, tc.head_dim)
    last_kv_params = tc.hidden_size * 2 * tc.num_kv_heads * tc.head_dim  # the last layer: K/V projections only
    pre_flops, lm_params = pre_flops + 2.0 * lp * last_kv_params, lm_params + last_kv_params
    h = cfg.horizon
    exp_flops, exp_params = _decoder(h, lp + h, ec.hidden_size, ec.intermediate_size, tc.num_layers, tc.num_heads,
                                     tc.num_kv_heads, tc.head_dim)
    kv_bytes = tc.num_layers * 2 * (lp + h) * tc.num_kv_heads * tc.head_dim * bytes_per_param * batch_size
    return Floor(
        flops={"vision": batch_size * vis_flops, "prefix": batch_size * pre_flops,
               "expert": batch_size * steps * exp_flops},
        bytes={"vision": vis_params * bytes_per_param, "prefix": lm_params * bytes_per_param + kv_bytes,
               "expert": steps * (exp_params * bytes_per_param + kv_bytes)},
    )


def gpu_peak(device_name: str) -> tuple[str, float, float] | None:
    """(key, peak FLOP/s, bandwidth) for a CUDA device name such as 'NVIDIA H100 80GB HBM3', else None."""
    for key, (flops, bw) in GPU_PEAKS.items():
        if key.lower() in device_name.lower():
            return key, flops, bw
    return None


def training_flops(cfg: PolicyConfig, variant: str, batch_size: int, text_tokens: int,
                   target_tokens: int) -> dict[str, float]:
    """The FLOPs of one training step (forward + backward = 3x forward for every trained part), by part, for the
    token counts a batch really has after `trim_padding`.

    What KI adds over pi0 is arithmetic on the backbone side: the FAST target tokens run through every backbone layer
    (the backbone sequence grows from prefix to prefix + targets) and through the LM head for the CE loss. The
    expert costs the same in both (insulation only skips the K/V gradient into the backbone, a few percent of the
    expert's backward, ignored here). So the FLOP ratio ki/pi0 is what the measured step-time ratio should approach
    when the step is compute-bound.
    """
    tc, ec = cfg.text, cfg.expert
    vision, _ = _vision(cfg)
    lp = cfg.num_image_tokens + text_tokens
    ce = variant in ("ki", "joint", "pi0_fast")
    lb = lp + (target_tokens if ce else 0)
    backbone, _ = _decoder(lb, lb, tc.hidden_size, tc.intermediate_size, tc.num_layers, tc.num_heads, tc.num_kv_heads,
                           tc.head_dim)
    head = 2.0 * target_tokens * tc.hidden_size * tc.vocab_size if ce else 0.0
    expert = 0.0
    if variant != "pi0_fast":
        h = cfg.horizon
        expert, _ = _decoder(h, lp + h, ec.hidden_size, ec.intermediate_size, tc.num_layers, tc.num_heads,
                             tc.num_kv_heads, tc.head_dim)
    trained = 0.0 if variant == "frozen" else 1.0  # frozen: the backbone runs forward only
    parts = {"vision": vision * (1 + 2 * trained), "backbone": backbone * (1 + 2 * trained), "lm_head": 3.0 * head,
             "expert": 3.0 * expert}
    return {k: batch_size * v for k, v in parts.items()}
