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

"""The VLM backbone over transformers modules, behind one interface for both layouts.

We keep transformers' modules (and so their parameter names and pretrained weights) but run the decoder
layers in our own loop: KI needs every layer's post-RoPE prefix K/V and masks that transformers'
causal-LM forward does not express (bidirectional prefix, causal FAST tokens). Parameter names follow
the upstream models, so a PaliGemma/SmolVLM state dict maps onto ours by prefix renaming:

  siglip layout   vision_tower.*                multi_modal_projector.linear.*   language_model.*  (PaliGemma)
  idefics3 layout vision_model.*                connector.modality_projection.*  language_model.*  (SmolVLM)
"""
from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GemmaConfig, Idefics3Config, LlamaConfig, SiglipVisionConfig
from transformers.models.gemma.modeling_gemma import GemmaModel
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector, Idefics3VisionTransformer
from transformers.models.llama.modeling_llama import LlamaModel, apply_rotary_pos_emb
from transformers.models.siglip.modeling_siglip import SiglipVisionModel

from ki_vla.model.attention import attend, sdpa_mask
from ki_vla.model.config import PolicyConfig, TextConfig, VisionConfig
from ki_vla.model.keypoints import SpatialKeypoints
from ki_vla.model.pretrained import load_pretrained_text_model
from ki_vla.model.projections import gated_mlp, project_qkv

log = logging.getLogger(__name__)

KV = tuple[torch.Tensor, torch.Tensor]


def hf_text_config(tc: TextConfig):
    common = dict(
        vocab_size=tc.vocab_size, hidden_size=tc.hidden_size, intermediate_size=tc.intermediate_size,
        num_hidden_layers=tc.num_layers, num_attention_heads=tc.num_heads, num_key_value_heads=tc.num_kv_heads,
        head_dim=tc.head_dim, rms_norm_eps=tc.rms_norm_eps, max_position_embeddings=tc.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": tc.rope_theta}, tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    if tc.arch == "gemma":
        return GemmaConfig(hidden_activation="gelu_pytorch_tanh", **common)
    return LlamaConfig(hidden_act="silu", **common)


class MultiModalProjector(nn.Module):
    """PaliGemma's projector (one linear layer), kept as a module so its key is `multi_modal_projector.linear`."""

    def __init__(self, vision_width: int, text_width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_width, text_width, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class _Float32Rotary:
    """Mixin for a transformers rotary-embedding module: casts (`.to(bfloat16)`, `.half()`) move its inverse
    frequencies to the new device but keep them float32. Rounded to bf16 they shift every position's angle (cos
    tables off by up to 1.26 at pi0.5's head_dim 256 near position 1000): a bf16 model would see other positions
    than the fp32 model it was trained as, and pretrained weights would lose their positional code."""

    _ROTARY_BUFFERS = ("inv_freq", "original_inv_freq")

    def _apply(self, fn, recurse=True):
        saved = {n: getattr(self, n) for n in self._ROTARY_BUFFERS if isinstance(getattr(self, n, None), torch.Tensor)}
        super()._apply(fn, recurse)
        for name, value in saved.items():
            setattr(self, name, value.to(device=getattr(self, name).device, dtype=torch.float32))
        return self


_FLOAT32_ROTARY_CLASSES: dict[type, type] = {}


def keep_rotary_float32(rotary: nn.Module) -> None:
    """Give `rotary` (in place) the `_Float32Rotary` behaviour; a class swap rather than a patched method, so
    `copy.deepcopy` (the inference engine's copy) and state dicts keep working unchanged."""
    cls = type(rotary)
    if issubclass(cls, _Float32Rotary):
        return
    if cls not in _FLOAT32_ROTARY_CLASSES:
        _FLOAT32_ROTARY_CLASSES[cls] = type(f"Float32{cls.__name__}", (_Float32Rotary, cls), {})
    rotary.__class__ = _FLOAT32_ROTARY_CLASSES[cls]
    for name in _Float32Rotary._ROTARY_BUFFERS:
        value = getattr(rotary, name, None)
        if isinstance(value, torch.Tensor):
            setattr(rotary, name, value.float())


class VLMBackbone(nn.Module):
    """Images + prompt tokens -> per-layer K/V and logits.

    embed_images(images)   (B, N_cam, 3, S, S) in [-1, 1]     -> (B, N_cam * T_img, D)
    embed_tokens(ids)      (B, L)                             -> (B, L, D)
    forward(x, mask, pos, past_kv=None, kv_only=False)        -> final-normed hidden (B, L, D) (None if kv_only),
                                                                 per-layer (K, V)
    logits(hidden)         (..., D)                           -> (..., vocab) with the tied embedding
    """

    def __init__(self, cfg: PolicyConfig, pretrained_root: Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        tc, vc = cfg.text, cfg.vision
        self.gradient_checkpointing = False
        model = load_pretrained_text_model(tc) if tc.pretrained else None
        if model is None:
            hf_cfg = hf_text_config(tc)
            model = GemmaModel(hf_cfg) if tc.arch == "gemma" else LlamaModel(hf_cfg)
        self.language_model = model
        keep_rotary_float32(model.rotary_emb)
        for layer in model.layers:
            # Our layer computation (K/V out, explicit masks) replaces transformers' forward on each instance.
            # Calling the layer module itself (rather than reaching into its submodules) keeps module hooks
            # working: FSDP2 gathers each layer's shards in its forward pre-hook.
            layer.forward = types.MethodType(_decoder_layer_forward, layer)
        if vc.arch == "siglip":
            self.vision_tower = SiglipVisionModel(self._siglip_config(vc))
            self.multi_modal_projector = MultiModalProjector(vc.hidden_size, tc.hidden_size)
        else:
            vcfg = Idefics3VisionConfig(**self._vision_kwargs(vc))
            self.vision_model = Idefics3VisionTransformer(vcfg)
            icfg = Idefics3Config(vision_config=vcfg.to_dict(), text_config=hf_text_config(tc).to_dict(),
                                  scale_factor=vc.scale_factor)
            self.connector = Idefics3Connector(icfg)
        self.keypoints = SpatialKeypoints(vc.keypoints, vc.keypoint_channels, tc.hidden_size) if vc.keypoints else None

    @staticmethod
    def _vision_kwargs(vc: VisionConfig) -> dict:
        return dict(hidden_size=vc.hidden_size, intermediate_size=vc.intermediate_size, num_hidden_layers=vc.num_layers,
                    num_attention_heads=vc.num_heads, image_size=vc.image_size, patch_size=vc.patch_size,
                    attn_implementation="sdpa")

    def _siglip_config(self, vc: VisionConfig) -> SiglipVisionConfig:
        # PaliGemma reads the patch tokens; SigLIP's attention-pooling head is unused and absent from its checkpoints.
        return SiglipVisionConfig(vision_use_head=False, **self._vision_kwargs(vc))

    # ---- embeddings -----------------------------------------------------------------------------
    def embed_images(self, images: torch.Tensor, keypoint_coords: torch.Tensor | None = None) -> torch.Tensor:
        """keypoint_coords: `keypoint_coordinates(images)` when the caller has them already (the expert reads them
        too): the keypoint stem, the costly part on a CPU, then runs once per forward."""
        b, n = images.shape[:2]
        flat = images.flatten(0, 1).to(self.dtype)
        if self.cfg.vision.arch == "siglip":
            feats = self.multi_modal_projector(self.vision_tower(pixel_values=flat).last_hidden_state)
        else:
            feats = self.connector(self._idefics3_vision(flat))
        if self.keypoints is not None:
            coords = (self.keypoints.coordinates(flat) if keypoint_coords is None
                      else keypoint_coords.reshape(b * n, -1, 2))
            feats = torch.cat([feats, self.keypoints.tokens(coords).to(feats.dtype)], dim=1)
        return feats.reshape(b, n * feats.shape[1], feats.shape[2])

    def keypoint_coordinates(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N_cam, 3, S, S) -> (B, N_cam * keypoints * 2): every camera's keypoint (x, y), camera-major."""
        b, n = images.shape[:2]
        coords = self.keypoints.coordinates(images.flatten(0, 1).to(self.dtype))
        return coords.reshape(b, n * coords.shape[1] * 2)

    def _idefics3_vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """Idefics3VisionTransformer's forward for images without padded patches (ours: the processor fits every
        camera to the full square). transformers' forward supports ragged patch grids and pays for it with host
        syncs (`mask.all()` in its mask builder, a CPU `torch.ones` copied to the device) that a CUDA graph cannot
        capture. With every patch valid, its bucketized position ids are exactly 0..P-1 and the attention mask is
        all-True, so the same computation is: patch conv + position table + encoder without a mask."""
        vm = self.vision_model
        emb = vm.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        table = vm.embeddings.position_embedding.weight
        if emb.shape[1] != table.shape[0]:
            raise ValueError(f"images of {tuple(pixels.shape[-2:])} px give {emb.shape[1]} patches; the vision tower "
                             f"expects {table.shape[0]} ({self.cfg.vision.image_size} px)")
        emb = emb + table
        return vm.post_layernorm(vm.encoder(inputs_embeds=emb, attention_mask=None).last_hidden_state)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        # Gemma's embedding module multiplies by sqrt(width) itself; Llama's does not scale.
        return self.language_model.embed_tokens(ids)

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def vision_layers(self) -> nn.ModuleList:
        """The vision encoder's transformer layers (one module type, so one compiled graph serves them all)."""
        if self.cfg.vision.arch == "siglip":
            # some transformers versions wrap SigLIP's transformer in `.vision_model`, others do not
            tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
            return tower.encoder.layers
        return self.vision_model.encoder.layers

    def rope(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for `positions` (B, L) from the language model's own rotary module (shared with the expert)."""
        return self.language_model.rotary_emb(like, positions)

    # ---- transformer ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                past_kv: list[KV] | None = None, kv_only: bool = False) -> tuple[torch.Tensor | None, list[KV]]:
        """Run every decoder layer. `mask` is (B, L, L_past + L). Returned K/V are post-RoPE and include
        `past_kv` (so the result can be fed back for incremental decoding).

        kv_only: the caller wants the K/V alone (the expert's prefix): the last layer stops after its K/V
        projections, skipping its attention, MLP and the final norm (~5% of a pi0.5 prefix pass), and the
        hidden state returned is None."""
        cos, sin = self.rope(positions, x)
        mask = sdpa_mask(mask, self.cfg.text.num_heads // self.cfg.text.num_kv_heads)  # once for every layer
        new_kv: list[KV] = []
        layers = self.language_model.layers
        for i, layer in enumerate(layers):
            past = past_kv[i] if past_kv is not None else None
            stop = kv_only and i == len(layers) - 1
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, k, v = checkpoint(layer, x, mask, cos, sin, past, stop, use_reentrant=False)
            else:
                x, k, v = layer(x, mask, cos, sin, past, stop)
            new_kv.append((k, v))
        return (None if kv_only else self.language_model.norm(x)), new_kv

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.language_model.embed_tokens.weight.T


class LayerOutput(NamedTuple):
    x: torch.Tensor  # (B, L, W) hidden states after the layer
    k: torch.Tensor  # (B, Hkv, L_past + L, D) keys, post-RoPE
    v: torch.Tensor  # (B, Hkv, L_past + L, D) values


def _decoder_layer_forward(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                           past: KV | None = None, kv_only: bool = False) -> LayerOutput:
    """One Llama/Gemma decoder layer: pre-norm attention with RoPE, then the MLP.
    mask: in `attend`'s layout (`sdpa_mask`).
    kv_only: return right after the K/V (x unchanged): a caller that needs no hidden state past this layer."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    q, k, v = project_qkv(attn, h, attn.head_dim)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if past is not None:
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
    if kv_only:
        return LayerOutput(x, k, v)
    x = x + attn.o_proj(attend(q, k, v, mask))
    x = x + gated_mlp(layer.mlp, layer.post_attention_layernorm(x))
    return LayerOutput(x, k, v)
