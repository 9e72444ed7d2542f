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

"""Static-shape inference engine for the expert variants (ki, joint, pi0, frozen).

What makes it faster than `KIPolicy.sample_actions` (the reference it is tested against):
- Every tensor the loop touches is preallocated once for a fixed batch size: input buffers, the noise, one
  K/V buffer per layer of length L_prefix + H that the backbone fills with the prefix and each expert layer
  overwrites its own tail of in place (no per-step concatenation), and the output.
- The expert's mask and RoPE tables depend only on the prefix, so they are computed once per chunk, not per step;
  everything the (fixed) flow-time schedule contributes — the time MLP and every adaRMS modulation — is computed
  once per engine (`ActionExpert.step_conditioning`).
- Q/K/V and gate/up matrices of the backbone and expert layers are merged (`ki_vla.model.projections`): one GEMM
  instead of three and two.
- The three stages (vision, prefix, denoising loop) are captured as CUDA graphs on a GPU: one launch each,
  no Python or allocator work per kernel. Keys/values stay in the grouped-query layout: attention folds each
  query group onto its K/V head (`ki_vla.model.attention.attend`) instead of materializing them per query head.
- The prefix pass stops the last backbone layer after its K/V (`kv_only`): its attention, MLP and final norm
  would only feed logits the expert never reads.
- Weights are converted to the requested dtype (bf16 on GPU) once, at construction.
- Norms, activations, residual gates and RoPE are fused per layer type by torch.compile (`ki_vla.infer.fusion`;
  on by default on a GPU), compiled during the warm-up that precedes capture.
On the CPU there is nothing to capture; the same static path runs eagerly (that is what the tests check, with and
without fusion). `ki_vla.infer.capture_check` checks on the CPU that every stage is capturable.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from ki_vla.infer.rtc import RTCGuide, guided_step, inpaint_step, prefix_times
from ki_vla.model.attention import block_causal_mask, positions_from_valid
from ki_vla.model.config import PolicyConfig
from ki_vla.model.expert import StepConditioning
from ki_vla.model.policy import KIPolicy
from ki_vla.model.projections import merge_projections
from ki_vla.observation import Observation

log = logging.getLogger(__name__)

STAGES = ("vision", "prefix", "expert")


def fuse_by_default(device: torch.device) -> bool:
    """torch.compile fusion pays off on a GPU; on the CPU its compile time outweighs what it saves per call."""
    return device.type == "cuda"


@dataclass
class EngineBuffers:
    images: torch.Tensor
    image_valid: torch.Tensor
    text_ids: torch.Tensor
    text_valid: torch.Tensor
    noise: torch.Tensor
    # the expert context (KIPolicy.expert_context): state, instruction embedding, keypoint coordinates
    state: torch.Tensor
    instruction_ids: torch.Tensor | None  # expert.instruction_input: the instruction's own tokens (processor)
    instruction_valid: torch.Tensor | None
    dims: torch.Tensor  # KIPolicy.action_dim_mask: x stays zero on the padded action dims
    image_tokens: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    out: torch.Tensor
    # real-time chunking: the previous chunk, normalized and padded (KIPolicy.guide_tensors)
    guide_target: torch.Tensor
    guide_weights: torch.Tensor  # its prefix weights on the robot's action dims


class InferenceEngine:
    def __init__(self, policy: KIPolicy, batch_size: int = 1, num_steps: int | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 cuda_graphs: bool | None = None, fuse: bool | None = None, text_tokens: int | None = None) -> None:
        """text_tokens: the static prompt budget (default: the model's max_text_tokens). A robot's prompts
        (instruction + discretized state) are bounded well below a training budget sized for VLM data, and every
        slot is a backbone token per inference: a tighter budget is a shorter prefix. Longer prompts are refused."""
        if policy.expert is None:
            raise ValueError("the engine serves expert variants; pi0_fast decodes autoregressively "
                             "(use sample_actions)")
        device = torch.device(device) if device is not None else policy.device
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.cfg = cfg = policy.cfg
        self.device, self.dtype = device, dtype
        self.batch_size = batch_size
        self.text_tokens = text_tokens or cfg.max_text_tokens
        if not 1 <= self.text_tokens <= cfg.max_text_tokens:
            raise ValueError(f"text_tokens must be in [1, {cfg.max_text_tokens}] (the model's max_text_tokens), "
                             f"got {text_tokens}")
        self.num_steps = num_steps or cfg.num_flow_steps
        self.cuda_graphs = (device.type == "cuda") if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.fused = fuse_by_default(device) if fuse is None else fuse
        # our own copy, in the serving dtype: projections are merged and layers compiled in place, and the caller's
        # policy stays as it was
        self.policy = policy = copy.deepcopy(policy).to(device=device, dtype=dtype).eval()
        for layer in [*policy.backbone.layers, *policy.expert.layers]:
            merge_projections(layer)
        if self.fused:
            from ki_vla.infer.fusion import fuse_layers

            fuse_layers(self.policy)
        self.buffers = self._allocate()
        with torch.no_grad():
            self.conditioning = [policy.expert.step_conditioning(torch.full((batch_size,), 1.0 - i / self.num_steps,
                                                                            device=device))
                                 for i in range(self.num_steps)]
        self._graphs: dict[str, torch.cuda.CUDAGraph] = {}
        if self.cuda_graphs:
            self._capture()

    def _allocate(self) -> EngineBuffers:
        cfg, b, dev, dt = self.cfg, self.batch_size, self.device, self.dtype
        tc = cfg.text
        lp = cfg.num_image_tokens + self.text_tokens
        kv_shape = (b, tc.num_kv_heads, lp + cfg.horizon, tc.head_dim)
        return EngineBuffers(
            images=torch.zeros(b, len(cfg.camera_names), 3, cfg.image_size, cfg.image_size, device=dev, dtype=dt),
            image_valid=torch.ones(b, len(cfg.camera_names), dtype=torch.bool, device=dev),
            text_ids=torch.zeros(b, self.text_tokens, dtype=torch.long, device=dev),
            text_valid=torch.ones(b, self.text_tokens, dtype=torch.bool, device=dev),
            noise=torch.zeros(b, cfg.horizon, cfg.max_action_dim, device=dev),
            state=torch.zeros(b, cfg.expert_context_dim, device=dev),
            instruction_ids=(torch.zeros(b, cfg.max_text_tokens, dtype=torch.long, device=dev)
                             if cfg.expert.instruction_input else None),
            instruction_valid=(torch.ones(b, cfg.max_text_tokens, dtype=torch.bool, device=dev)
                               if cfg.expert.instruction_input else None),
            dims=self.policy.action_dim_mask(dev),
            image_tokens=torch.zeros(b, cfg.num_image_tokens, tc.hidden_size, device=dev, dtype=dt),
            kv=[(torch.zeros(kv_shape, device=dev, dtype=dt), torch.zeros(kv_shape, device=dev, dtype=dt))
                for _ in range(tc.num_layers)],
            mask=torch.zeros(b, 1, tc.num_heads // tc.num_kv_heads * cfg.horizon, lp + cfg.horizon, dtype=torch.bool,
                             device=dev),  # in attend's layout (sdpa_mask)
            cos=torch.zeros(b, cfg.horizon, tc.head_dim, device=dev, dtype=dt),
            sin=torch.zeros(b, cfg.horizon, tc.head_dim, device=dev, dtype=dt),
            out=torch.zeros(b, cfg.horizon, cfg.action_dim, device=dev),
            guide_target=torch.zeros(b, cfg.horizon, cfg.max_action_dim, device=dev),
            guide_weights=torch.zeros(b, cfg.horizon, cfg.max_action_dim, device=dev),
        )

    # ---- the three stages: tensor ops on the static buffers only (capturable) ---------------------------
    def _vision(self) -> None:
        buf, bb = self.buffers, self.policy.backbone
        coords = bb.keypoint_coordinates(buf.images) if bb.keypoints is not None else None
        buf.image_tokens.copy_(bb.embed_images(buf.images, coords))
        if self.cfg.expert.keypoint_input:  # the expert context's tail (KIPolicy.expert_context)
            buf.state[:, buf.state.shape[1] - coords.shape[1]:].copy_(coords)

    def _prefix(self) -> None:
        buf, bb = self.buffers, self.policy.backbone
        per_image = self.cfg.vision.tokens_per_image
        valid = torch.cat([buf.image_valid.repeat_interleave(per_image, dim=1), buf.text_valid], dim=1)
        emb = torch.cat([buf.image_tokens, bb.embed_tokens(buf.text_ids).to(self.dtype)], dim=1)
        _, kv = bb(emb, block_causal_mask(valid, torch.zeros_like(valid, dtype=torch.long)),
                   positions_from_valid(valid), kv_only=True)
        lp = emb.shape[1]
        for (kb, vb), (k, v) in zip(buf.kv, kv, strict=True):
            kb[:, :, :lp].copy_(k)
            vb[:, :, :lp].copy_(v)
        if self.cfg.expert.instruction_input:  # after the state in the expert context (KIPolicy.expert_context)
            start = self.cfg.state_dim if self.cfg.expert.state_input else 0
            buf.state[:, start: start + self.cfg.text.hidden_size].copy_(
                self.policy.instruction_embedding(buf.instruction_ids, buf.instruction_valid))
        mask, cos, sin = self.policy.expert_inputs(valid)
        buf.mask.copy_(mask)
        buf.cos.copy_(cos)
        buf.sin.copy_(sin)

    def _expert(self, method: str | None = None, beta: float = 0.0, delay: int = 0) -> None:
        """The denoising loop; `method` "guided" / "inpaint" / "prefix": real-time chunking toward `guide_target`
        (the reference's `sample_actions(guide=)`, step for step; "prefix" computes its per-token time conditioning
        each step instead of the engine's precomputed one)."""
        buf, expert = self.buffers, self.policy.expert
        x = buf.noise
        dt = -1.0 / self.num_steps
        horizon = self.cfg.horizon
        committed = torch.arange(horizon, device=self.device)[None, :, None] < delay
        for i, cond in enumerate(self.conditioning):
            def velocity(xi: torch.Tensor, cond: StepConditioning = cond) -> torch.Tensor:
                return expert(xi, None, buf.kv, buf.mask, buf.cos, buf.sin, kv_is_buffer=True, conditioning=cond,
                              state=buf.state).float()

            if method == "guided":
                v = guided_step(velocity, x, 1.0 + i * dt, buf.guide_target, buf.guide_weights, beta)
            elif method == "prefix":
                x = torch.where(committed, buf.guide_target, x)
                t = torch.full((self.batch_size,), 1.0 + i * dt, device=self.device)
                t_tok = prefix_times(t, horizon, torch.full((self.batch_size,), delay, device=self.device))
                v = expert(x, t_tok, buf.kv, buf.mask, buf.cos, buf.sin, kv_is_buffer=True, state=buf.state).float()
            else:
                v = velocity(x)
            x = x + dt * v * buf.dims
            if method == "inpaint":
                x = inpaint_step(x, buf.noise, buf.guide_target, buf.guide_weights, 1.0 + (i + 1) * dt)
        if method == "prefix":
            x = torch.where(committed, buf.guide_target, x)
        buf.out.copy_(x[..., : self.cfg.action_dim])

    def _stage_fns(self) -> dict[str, Callable[[], None]]:
        return {"vision": self._vision, "prefix": self._prefix, "expert": self._expert}

    def _capture(self) -> None:
        fns = self._stage_fns()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: cuBLAS handles, autotuning, lazy inits
                for fn in fns.values():
                    fn()
        torch.cuda.current_stream().wait_stream(side)
        pool = None
        for name in STAGES:
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph, pool=pool):
                fns[name]()
            pool = graph.pool()
            self._graphs[name] = graph
        log.info("captured CUDA graphs for %s (batch %d, %d steps)", ", ".join(STAGES), self.batch_size, self.num_steps)

    # ---- running ------------------------------------------------------------------------------------------
    def load(self, batch: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> None:
        """Copy a processor batch (and the noise) into the static buffers."""
        buf, n = self.buffers, self.text_tokens
        text_ids, text_valid = batch["text_ids"], batch["text_valid"]
        if (batch["images"].shape != buf.images.shape or text_ids.shape[0] != self.batch_size
                or text_ids.shape[1] < n):
            raise ValueError(f"engine built for images {tuple(buf.images.shape)} / text {tuple(buf.text_ids.shape)}, "
                             f"got {tuple(batch['images'].shape)} / {tuple(text_ids.shape)}")
        if text_ids.shape[1] > n:  # prompts are left-padded: the budget keeps the last n columns
            if bool(text_valid[:, :-n].any()):
                longest = int(text_valid.sum(1).max())
                raise ValueError(f"a prompt of {longest} tokens exceeds the engine's prompt budget of {n} tokens "
                                 "(raise text_tokens, up to the model's max_text_tokens)")
            text_ids, text_valid = text_ids[:, -n:], text_valid[:, -n:]
        buf.images.copy_(batch["images"])
        buf.image_valid.copy_(batch["image_valid"])
        buf.text_ids.copy_(text_ids)
        buf.text_valid.copy_(text_valid)
        if self.cfg.expert.state_input:
            buf.state[:, : self.cfg.state_dim].copy_(batch["state"])
        if self.cfg.expert.instruction_input:
            buf.instruction_ids.copy_(batch["instruction_ids"])
            buf.instruction_valid.copy_(batch["instruction_valid"])
        if noise is None:
            noise = torch.randn(buf.noise.shape, generator=generator,
                                device=generator.device if generator else "cpu") * self.cfg.noise_scale
        # padded action dims stay zero (KIPolicy.action_dim_mask)
        buf.noise.copy_(noise.to(buf.noise.device) * buf.dims)

    def run_stage(self, name: str) -> None:
        if name in self._graphs:
            self._graphs[name].replay()
        else:
            with torch.no_grad():
                self._stage_fns()[name]()

    @torch.no_grad()
    def sample_actions(self, batch: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, normalized: bool = False,
                       guide: RTCGuide | None = None) -> torch.Tensor:
        """Same contract as KIPolicy.sample_actions for the engine's batch size. With a `guide` the denoising loop
        runs eagerly (on a GPU too: only the unguided loop is a captured graph; vision and prefix stay captured)."""
        self.load(batch, noise, generator)
        for name in STAGES[:-1]:
            self.run_stage(name)
        if guide is None:
            self.run_stage("expert")
        else:
            target, weights = self.policy.guide_tensors(guide, self.policy.processor.raw_state(batch["state"]))
            self.buffers.guide_target.copy_(target.expand_as(self.buffers.guide_target))
            self.buffers.guide_weights.copy_(weights.expand_as(self.buffers.guide_weights))
            self._expert(guide.method, guide.beta, guide.delay)
        out = self.buffers.out.clone()
        if normalized:
            return out
        return self.policy.to_real_units(out, batch)


class Predictor(Protocol):
    """What serves inference to the policy node and the evaluators: the reference `KIPolicy` or `EnginePredictor`."""

    cfg: PolicyConfig
    kind: str  # "reference sampler" | "inference engine", for logs

    def predict(self, obs: Observation, generator: torch.Generator | None = None,
                guide: RTCGuide | None = None) -> np.ndarray:
        """One observation -> (horizon, action_dim) float32 chunk in real units."""

    def warmup(self) -> None:
        """One inference on a blank observation: allocations, compilation and graph capture before real requests."""


class EnginePredictor:
    """The Predictor served by an InferenceEngine."""

    kind = "inference engine"

    def __init__(self, policy: KIPolicy, **engine_kwargs) -> None:
        self.engine = InferenceEngine(policy, batch_size=1, **engine_kwargs)
        self.cfg = self.engine.cfg

    def predict(self, obs: Observation, generator: torch.Generator | None = None,
                guide: RTCGuide | None = None) -> np.ndarray:
        """One observation -> (horizon, action_dim) float32 chunk in real units (KIPolicy.predict's contract)."""
        batch = self.engine.policy.processor.observation_batch(obs, self.engine.device)
        batch["images"] = batch["images"].to(self.engine.dtype)
        return self.engine.sample_actions(batch, generator=generator, guide=guide)[0].cpu().numpy().astype(np.float32)

    def warmup(self) -> None:
        self.predict(Observation.blank(self.cfg.camera_names, self.cfg.image_size, self.cfg.state_dim))


ENGINE_MODES = ("auto", "on", "off")


def _mode(name: str, value: str) -> None:
    if value not in ENGINE_MODES:
        raise ValueError(f"{name} must be one of {ENGINE_MODES}, got {value!r}")


def make_predictor(policy: KIPolicy, engine: str = "auto", fuse: str = "auto",
                   text_tokens: int = 0) -> Predictor:
    """What serves inference: the engine ("on"; "auto" = whenever it serves the variant: it is faster than the
    reference on the CPU too, and captures CUDA graphs on a GPU) or the reference `KIPolicy` ("off"; also
    pi0_fast, which decodes autoregressively). `fuse` picks the engine's torch.compile fusion ("auto" = on a
    CUDA device, and if compiling fails there the unfused engine serves, with a warning: fusion is an
    optimization, not a reason for a robot to have no policy; "on" = required) and `text_tokens` its prompt
    budget (0 = the model's)."""
    _mode("engine", engine)
    _mode("fuse", fuse)
    use = engine in ("on", "auto")
    if use and policy.expert is None:
        if engine == "on":
            raise ValueError("engine=on: the engine serves expert variants; pi0_fast decodes autoregressively")
        use = False
    if not use:
        return policy
    budget = text_tokens or None
    fused = fuse == "on" or (fuse == "auto" and fuse_by_default(policy.device))
    try:
        return EnginePredictor(policy, fuse=fused, text_tokens=budget)
    except Exception as exc:  # noqa: BLE001 - any compile/capture failure of the fused path
        if fuse != "auto" or not fused:
            raise
        log.warning("fused engine failed (%s: %s); serving the unfused engine", type(exc).__name__, exc)
        return EnginePredictor(policy, fuse=False, text_tokens=budget)
