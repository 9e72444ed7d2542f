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

"""KIPolicy: backbone + action expert + the five training variants of METHOD.md in one module.

Token layout (pi0.5): prefix = [image tokens of each camera][prompt] (bidirectional), then target tokens
(FAST action tokens + end token, or a VLM answer; causal, CE targets). The expert's H action tokens
attend to the valid prefix and to each other, never to target tokens, and nothing attends to them.
Because the backbone never reads the expert, the backbone runs once on [prefix; targets], and the
expert runs on its own tokens against the per-layer prefix K/V: detached for `ki` and `frozen`
(the stop-gradient of knowledge insulation), attached for `joint` and `pi0`.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ki_vla.atomic import atomic_dir
from ki_vla.data.normalize import Normalizer
from ki_vla.infer.rtc import RTCGuide, guided_step, inpaint_step, prefix_times
from ki_vla.model.attention import block_causal_mask, positions_from_valid, sdpa_mask
from ki_vla.model.backbone import KV, VLMBackbone
from ki_vla.model.config import PolicyConfig, check_noise_scale
from ki_vla.model.expert import ActionExpert
from ki_vla.model.pretrained import load_text_tokenizer
from ki_vla.model.processing import Processor, check_fast_tokenizer, trim_padding
from ki_vla.observation import Observation
from ki_vla.paths import resolve

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
NORMALIZER = "normalizer.json"
TEXT_TOKENIZER = "text_tokenizer"
FAST_TOKENIZER = "fast_tokenizer"


class ExpertInputs(NamedTuple):
    """What the expert's H tokens need from the prefix, the same for every denoising step of a chunk."""

    mask: torch.Tensor  # (B, H, L_p + H) in `attend`'s layout (sdpa_mask)
    cos: torch.Tensor   # RoPE tables of the H positions after the valid prefix
    sin: torch.Tensor


class KIPolicy(nn.Module):
    kind = "reference sampler"  # a Predictor (ki_vla.infer.engine): what serves inference, for logs

    def __init__(self, cfg: PolicyConfig, text_tokenizer: Any | None = None, fast_tokenizer: Any | None = None,
                 normalizer: Normalizer | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = VLMBackbone(cfg)
        self.expert = ActionExpert(cfg) if cfg.has_expert else None
        if cfg.variant == "frozen":
            self.backbone.requires_grad_(False)
        if text_tokenizer is None:
            text_tokenizer = load_text_tokenizer(cfg.text.tokenizer)
        self.processor = Processor(cfg, text_tokenizer, fast_tokenizer, normalizer)
        if cfg.dtype != "float32":
            self.to(getattr(torch, cfg.dtype))

    # ---- construction helpers --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def fast_tokenizer(self) -> Any | None:
        return self.processor.fast_tokenizer

    def set_fast_tokenizer(self, tokenizer: Any) -> None:
        check_fast_tokenizer(tokenizer, self.cfg)
        self.processor.fast_tokenizer = tokenizer

    def set_normalizer(self, normalizer: Normalizer) -> None:
        """Install the dataset's normalization (computed once per dataset, saved with the checkpoint)."""
        self.processor = Processor(self.cfg, self.processor.text_tokenizer, self.processor.fast_tokenizer, normalizer)

    def set_noise_scale(self, scale: float) -> None:
        """Sample from flow noise scaled by `scale` (PolicyConfig.noise_scale) instead of the checkpoint's: an inference
        choice, so evaluations and the policy node can set it without rewriting the checkpoint. Set it before
        building an engine around this policy (the engine reads the same config)."""
        self.cfg.noise_scale = check_noise_scale(scale)

    def example_batch(self, batch_size: int = 2, seed: int = 0, vlm_samples: int = 0) -> dict[str, torch.Tensor]:
        """A valid random training batch (random images/state/actions; random FAST ids stand in for a fitted
        FAST tokenizer). The last `vlm_samples` samples are action-free VLM samples."""
        cfg, rng = self.cfg, np.random.default_rng(seed)
        samples: list[dict[str, Any]] = []
        for i in range(batch_size):
            images = {c: rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
                      for c in cfg.camera_names}
            if i >= batch_size - vlm_samples:
                samples.append({"images": images, "prompt": "What is on the table? ", "answer": "a red cube"})
                continue
            samples.append({"images": images, "state": rng.uniform(-1, 1, cfg.state_dim).astype(np.float32),
                            "instruction": "transfer the red cube",
                            "actions": smooth_chunk(rng, cfg.horizon, cfg.action_dim)})
        fast = self.processor.fast_tokenizer
        self.processor.fast_tokenizer = fast or _RandomFastIds(cfg.fast_vocab_size, rng)
        try:
            return self.processor(samples, device=self.device)
        finally:
            self.processor.fast_tokenizer = fast

    # ---- forward pieces ----------------------------------------------------------------------------
    def _prefix(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings (B, L_p, D) and validity (B, L_p)."""
        img = self.backbone.embed_images(batch["images"], batch.get("keypoint_coords"))
        per_image = img.shape[1] // batch["images"].shape[1]
        img_valid = batch["image_valid"].repeat_interleave(per_image, dim=1)
        txt = self.backbone.embed_tokens(batch["text_ids"])
        return torch.cat([img, txt.to(img.dtype)], dim=1), torch.cat([img_valid, batch["text_valid"]], dim=1)

    def _run_backbone(self, batch: dict[str, torch.Tensor],
                      with_targets: bool) -> tuple[torch.Tensor | None, list[KV], torch.Tensor]:
        """Final hidden states (None without targets: then only the prefix K/V are needed), prefix K/V, validity."""
        emb, valid = self._prefix(batch)
        lp = emb.shape[1]
        new_block = torch.zeros_like(valid, dtype=torch.long)
        if with_targets:
            tgt = self.backbone.embed_tokens(batch["target_ids"]).to(emb.dtype)
            emb = torch.cat([emb, tgt], dim=1)
            new_block = torch.cat([new_block, torch.ones_like(batch["target_valid"], dtype=torch.long)], dim=1)
            valid = torch.cat([valid, batch["target_valid"]], dim=1)
        mask = block_causal_mask(valid, new_block)
        hidden, kv = self.backbone(emb, mask, positions_from_valid(valid), kv_only=not with_targets)
        return hidden, [(k[:, :, :lp], v[:, :, :lp]) for k, v in kv], valid[:, :lp]

    def expert_inputs(self, prefix_valid: torch.Tensor) -> ExpertInputs:
        """The expert's attention mask (B, H, L_p + H), in `attend`'s layout (`sdpa_mask`), and RoPE tables for its
        H tokens, whose positions continue after the valid prefix. They depend on the prefix only, so a denoising
        loop computes them once."""
        b, h = prefix_valid.shape[0], self.cfg.horizon
        own = torch.ones(b, h, h, dtype=torch.bool, device=prefix_valid.device)
        mask = torch.cat([prefix_valid[:, None, :].expand(b, h, -1), own], dim=2)
        offset = prefix_valid.long().sum(dim=1)
        positions = offset[:, None] + torch.arange(h, device=prefix_valid.device)[None, :]
        like = torch.empty((), dtype=self.backbone.dtype, device=prefix_valid.device)
        cos, sin = self.backbone.rope(positions, like)
        return ExpertInputs(sdpa_mask(mask, self.cfg.text.num_heads // self.cfg.text.num_kv_heads), cos, sin)

    def _expert_velocity(self, x_t: torch.Tensor, t: torch.Tensor, prefix_kv: list[KV], prefix_valid: torch.Tensor,
                         state: torch.Tensor | None = None) -> torch.Tensor:
        return self.expert(x_t, t, prefix_kv, *self.expert_inputs(prefix_valid), state=state)

    def _with_keypoints(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`batch` plus its keypoint coordinates (B, N_cam * K * 2), computed once for the keypoint token and the
        expert context alike (the stem is the costly part on a CPU)."""
        if self.backbone.keypoints is None or "keypoint_coords" in batch:
            return batch
        return {**batch, "keypoint_coords": self.backbone.keypoint_coordinates(batch["images"])}

    def instruction_embedding(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, text hidden) the mean input embedding of each instruction's valid tokens (`expert.instruction_input`;
        the processor's `instruction_ids`, the instruction alone: a mean over the whole prompt measured a red-vs-blue
        difference of 0.2-0.5 standard deviations against the state digits' 0.4, and the first chunks hardly moved).

        A mean over valid tokens only, so padding does not change it."""
        emb = self.backbone.embed_tokens(ids).float()
        w = valid.float()[..., None]
        return (emb * w).sum(1) / w.sum(1).clamp(min=1.0)

    def expert_context(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, expert_context_dim) what the expert adds to its action tokens: the normalized state
        (`expert.state_input`), the instruction embedding (`expert.instruction_input`) and the keypoint coordinates
        (`expert.keypoint_input`), the backbone's parts detached in the insulated variants like every other backbone
        output (the keypoints not with `expert.keypoint_grad`); None when it reads none."""
        ec = self.cfg.expert
        insulate = self.cfg.insulated or self.cfg.variant == "frozen"
        parts = []
        if ec.state_input:
            parts.append(batch["state"].float())
        if ec.instruction_input:
            instr = self.instruction_embedding(batch["instruction_ids"], batch["instruction_valid"])
            parts.append(instr.detach() if insulate else instr)
        if ec.keypoint_input:
            kp = self._with_keypoints(batch)["keypoint_coords"].float()
            parts.append(kp.detach() if insulate and not ec.keypoint_grad else kp)
        return torch.cat(parts, dim=1) if parts else None

    def action_dim_mask(self, device: torch.device | str) -> torch.Tensor:
        """(max_action_dim,) 1 for the robot's action dims, 0 for the padding up to max_action_dim.

        The padded dims are never supervised; if they carried noise, sampling would integrate an untrained
        velocity there and feed the drift back into the expert at every step. Noise and x are kept at zero on
        them in training, in `sample_actions` and in the inference engine alike."""
        mask = torch.zeros(self.cfg.max_action_dim, device=device)
        mask[: self.cfg.action_dim] = 1.0
        return mask

    def sample_time(self, b: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        a, c = self.cfg.time_beta
        # torch's Beta has no generator argument; Beta(a, 1) has the closed-form inverse CDF u ** (1 / a).
        if c == 1.0:
            u = torch.rand(b, device=device, generator=generator)
            t = u ** (1.0 / a)
        else:
            t = torch.distributions.Beta(a, c).sample((b,)).to(device)
        return t * 0.999 + 0.001

    # ---- training ----------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The training forward is the loss: DDP and FSDP hook module calls, so trainers call `policy(batch)`."""
        return self.compute_loss(batch, generator)

    def compute_loss(self, batch: dict[str, torch.Tensor],
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{"loss", "ce", "flow"} scalars. Samples without actions contribute CE only; `pi0` has no CE and
        `pi0_fast` no flow term (their entries are 0).

        Two optional batch entries make a step split into micro-batches (and ranks) equal to one big batch, which
        the trainer's gradient accumulation relies on: `loss_norm` (2,) = the step's total valid target tokens and
        action steps, so each micro-batch's CE and flow are sums divided by the step's counts rather than means over
        its own (micro-batches have different token counts); `sample_seed` (B,) draws each sample's flow time and
        noise from its own generator, so a sample gets the same draws whichever micro-batch it lands in."""
        cfg = self.cfg
        batch = trim_padding(batch)
        with_targets = cfg.trains_backbone_ce
        grad_ctx = torch.no_grad() if cfg.variant == "frozen" else contextlib.nullcontext()
        with grad_ctx:
            batch = self._with_keypoints(batch)
            hidden, prefix_kv, prefix_valid = self._run_backbone(batch, with_targets)
        zero = prefix_valid.new_zeros((), dtype=torch.float32)
        ce = zero
        if with_targets:
            lp = prefix_valid.shape[1]
            lt = batch["target_ids"].shape[1]
            tv = batch["target_valid"]
            if tv.any():  # logits at valid targets only: at pi0.5 size each position costs 2 x 2048 x 257k FLOPs
                logits = self.backbone.logits(hidden[:, lp - 1: lp + lt - 1][tv]).float()
                if "loss_norm" in batch:
                    ce = (F.cross_entropy(logits, batch["target_ids"][tv], reduction="sum")
                          / batch["loss_norm"][0].clamp(min=1.0))
                else:
                    ce = F.cross_entropy(logits, batch["target_ids"][tv])
        flow = zero
        if self.expert is not None:
            if cfg.insulated:
                prefix_kv = [(k.detach(), v.detach()) for k, v in prefix_kv]
            actions = batch["actions"].to(torch.float32)
            b = actions.shape[0]
            top = cfg.rtc_max_delay + 1
            if "sample_seed" in batch:
                gens = [torch.Generator(device=actions.device).manual_seed(int(seed))
                        for seed in batch["sample_seed"].tolist()]
                t = torch.cat([self.sample_time(1, actions.device, g) for g in gens])
                noise = torch.stack([torch.randn(actions.shape[1:], device=actions.device, generator=g) for g in gens])
                delay = (torch.cat([torch.randint(0, top, (1,), device=actions.device, generator=g) for g in gens])
                         if cfg.rtc_max_delay else None)
            else:
                t = self.sample_time(b, actions.device, generator)
                noise = torch.randn(actions.shape, device=actions.device, generator=generator)
                delay = (torch.randint(0, top, (b,), device=actions.device, generator=generator)
                         if cfg.rtc_max_delay else None)
            noise = noise * self.action_dim_mask(actions.device)
            # Training-time RTC (cfg.rtc_max_delay > 0): the first `delay` actions are the committed prefix, clean
            # at flow time 0 and not supervised; without it every token has the sample's time.
            t_tok = prefix_times(t, cfg.horizon, delay) if cfg.rtc_max_delay else t[:, None].expand(b, cfg.horizon)
            x_t = t_tok[..., None] * noise + (1.0 - t_tok[..., None]) * actions
            v = self._expert_velocity(x_t, t_tok if cfg.rtc_max_delay else t, prefix_kv, prefix_valid,
                                      self.expert_context(batch)).float()
            err = (v - (noise - actions))[..., : cfg.action_dim].pow(2).mean(-1)
            # A masked mean rather than `err[av].mean()` only when some action is valid: a micro-batch of VLM
            # samples alone (co-training) still runs the expert into the loss with zero weight, so under DDP every
            # expert parameter gets its (zero) gradient and the reducer never waits for a missing one.
            # With training-time RTC the prefix's steps are masked out of the sum but stay in `loss_norm`'s count
            # (a step-wide constant, so accumulation still equals one big batch).
            av = batch["action_valid"].to(err.dtype)
            if cfg.rtc_max_delay:
                av = av * (torch.arange(cfg.horizon, device=av.device)[None, :] >= delay[:, None]).to(av.dtype)
            count = batch["loss_norm"][1] if "loss_norm" in batch else av.sum()
            flow = (err * av).sum() / count.clamp(min=1.0)
        # ce and flow keep their graphs so either can be back-propagated alone (the insulation tests do).
        return {"loss": ce + cfg.flow_alpha * flow, "ce": ce, "flow": flow}

    # ---- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def prefix_cache(self, batch: dict[str, torch.Tensor]) -> tuple[list[KV], torch.Tensor]:
        """One backbone pass over the prefix: the per-layer K/V every denoising step reuses."""
        _, kv, valid = self._run_backbone(trim_padding(batch), with_targets=False)
        return kv, valid

    @torch.no_grad()
    def sample_actions(self, batch: dict[str, torch.Tensor], num_steps: int | None = None,
                       noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       use_cache: bool = True, normalized: bool = False, guide: RTCGuide | None = None) -> torch.Tensor:
        """(B, horizon, action_dim) actions in real units (normalized ones with normalized=True).

        Expert variants: x_1 = noise, Euler steps dt = -1/num_steps to t = 0 (openpi). With use_cache=False
        the prefix K/V are recomputed at every step (the reference the cache is tested against). `guide`:
        real-time chunking, each step's velocity corrected toward the previous chunk (ki_vla.infer.rtc; one
        backward through the expert per step).
        pi0_fast: greedy autoregressive FAST decoding with a K/V cache.
        """
        if self.expert is None:
            out = self._decode_fast(batch)
        else:
            steps = num_steps or self.cfg.num_flow_steps
            b = batch["images"].shape[0]
            shape = (b, self.cfg.horizon, self.cfg.max_action_dim)
            x = (noise.to(self.device, torch.float32) if noise is not None
                 else torch.randn(shape, device=self.device, generator=generator) * self.cfg.noise_scale)
            if x.shape != shape:
                raise ValueError(f"noise has shape {tuple(x.shape)}, expected {shape}")
            dims = self.action_dim_mask(self.device)
            x = x * dims
            batch = self._with_keypoints(batch)
            state = self.expert_context(batch)
            kv, valid = self.prefix_cache(batch) if use_cache else (None, None)
            method = guide.method if guide is not None else None
            if guide is not None:
                target, weights = self.guide_tensors(guide, self.processor.raw_state(batch["state"]))
                x1 = x.clone()
                committed = torch.arange(self.cfg.horizon, device=self.device)[None, :, None] < guide.delay
            dt = -1.0 / steps
            for i in range(steps):
                t = torch.full((b,), 1.0 + i * dt, device=self.device)
                if not use_cache:
                    kv, valid = self.prefix_cache(batch)
                if method == "guided":
                    v = guided_step(lambda xg: self._expert_velocity(xg, t, kv, valid, state).float(), x,
                                    1.0 + i * dt, target, weights, guide.beta)
                elif method == "prefix":   # training-time RTC: the committed prefix given exactly, at time 0
                    x = torch.where(committed, target, x)
                    t_tok = prefix_times(t, self.cfg.horizon, torch.full((b,), guide.delay, device=self.device))
                    v = self._expert_velocity(x, t_tok, kv, valid, state).float()
                else:
                    v = self._expert_velocity(x, t, kv, valid, state).float()
                x = x + dt * v * dims
                if method == "inpaint":
                    x = inpaint_step(x, x1, target, weights.expand_as(x), 1.0 + (i + 1) * dt)
            if method == "prefix":
                x = torch.where(committed, target, x)
            out = x[..., : self.cfg.action_dim]
        if normalized:
            return out
        return self.to_real_units(out, batch)

    def to_real_units(self, actions: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sampled (B, H, action_dim) model-unit actions -> real units (relative to the batch's state for a
        delta-action model); the reference sampler and the engine share it."""
        state = self.processor.raw_state(batch["state"]) if self.cfg.delta_actions else None
        return torch.from_numpy(self.processor.unnormalize_actions(actions.cpu().numpy(), state)).to(actions.device)

    def guide_tensors(self, guide: RTCGuide, state: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's target in the sampler's normalized, padded units (1, H, max_action_dim) and its weights on
        the robot's action dims only (the padded dims stay zero). `state`: the observation's (1, state_dim) real
        state, which a delta-action model's target is relative to."""
        cfg = self.cfg
        if guide.target.shape != (cfg.horizon, cfg.action_dim):
            raise ValueError(f"RTC target has shape {guide.target.shape}, expected ({cfg.horizon}, {cfg.action_dim})")
        if state is not None:
            state = np.asarray(state, np.float32).reshape(-1, cfg.state_dim)[0]
        norm = self.processor.normalize_actions(np.asarray(guide.target, dtype=np.float32), state)
        target = torch.zeros(1, cfg.horizon, cfg.max_action_dim, device=self.device)
        target[0, :, : cfg.action_dim] = torch.as_tensor(norm, dtype=torch.float32, device=self.device)
        w = torch.as_tensor(guide.weights(), dtype=torch.float32, device=self.device)
        return target, w[None, :, None] * self.action_dim_mask(self.device)[None, None, :]

    def _decode_fast(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Greedy decoding restricted to FAST ids + end token; malformed sequences decode to a flagged fallback."""
        cfg, proc = self.cfg, self.processor
        if proc.fast_tokenizer is None:
            raise ValueError("pi0_fast needs a fitted FAST tokenizer to decode actions")
        emb, valid = self._prefix(trim_padding(batch))
        b = emb.shape[0]
        hidden, kv = self.backbone(emb, block_causal_mask(valid, torch.zeros_like(valid, dtype=torch.long)),
                                   positions_from_valid(valid))
        allowed = torch.full((cfg.text.vocab_size,), float("-inf"), device=emb.device)
        # only the ids this tokenizer has (it may be smaller than the reserved range): others cannot be decoded
        allowed[proc.fast_lm_hi - (proc.fast_tokenizer.vocab_size - 1): proc.fast_lm_hi + 1] = 0.0
        allowed[proc.eos_id] = 0.0
        logits = self.backbone.logits(hidden[:, -1]).float() + allowed
        n_valid = valid.long().sum(1)
        generated: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=emb.device)
        for step in range(cfg.max_target_tokens):
            tok = logits.argmax(-1)
            for i in range(b):
                if not done[i] and tok[i].item() != proc.eos_id:
                    generated[i].append(int(tok[i]))
            done |= tok == proc.eos_id
            if bool(done.all()) or step == cfg.max_target_tokens - 1:
                break
            valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=emb.device)], dim=1)
            x = self.backbone.embed_tokens(tok[:, None]).to(emb.dtype)
            mask = valid[:, None, :]
            hidden, kv = self.backbone(x, mask, (n_valid + step)[:, None], past_kv=kv)
            logits = self.backbone.logits(hidden[:, -1]).float() + allowed
        chunks = []
        for i, ids in enumerate(generated):
            chunk, ok = proc.fast_tokenizer.decode_with_status(proc.lm_to_fast(ids), cfg.horizon, cfg.action_dim)
            if not ok:
                log.warning("pi0_fast: sample %d decoded from a malformed token sequence; fallback chunk used", i)
            chunks.append(chunk)
        return torch.from_numpy(np.stack(chunks).astype(np.float32)).to(emb.device)

    def predict(self, obs: Observation, num_steps: int | None = None, generator: torch.Generator | None = None,
                guide: RTCGuide | None = None) -> np.ndarray:
        """One observation -> (horizon, action_dim) float32 chunk in real units (the ROS policy node's call);
        `guide`: real-time chunking against the previous chunk (sample_actions)."""
        batch = self.processor.observation_batch(obs, self.device)
        return self.sample_actions(batch, num_steps=num_steps, generator=generator,
                                   guide=guide)[0].cpu().numpy().astype(np.float32)

    def warmup(self) -> None:
        """One inference on dummy input, so allocations and lazy inits happen before the first real request."""
        obs = Observation.blank(self.cfg.camera_names, self.cfg.image_size, self.cfg.state_dim)
        if self.expert is None and self.fast_tokenizer is None:
            log.warning("pi0_fast without a FAST tokenizer: warm-up runs the prefix only")
            self.prefix_cache(self.processor([obs.__dict__], with_targets=False, device=self.device))
            return
        self.predict(obs)

    # ---- checkpoints -------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Weights (safetensors), config, both tokenizers and stats in one folder, written atomically: the
        folder is built beside the target and renamed into place, so a killed process leaves either the old
        checkpoint or the new one, never a mix. `state_dict` overrides the module's own tensors (an EMA copy, or the
        full state gathered from FSDP shards)."""
        tensors = self.state_dict() if state_dict is None else state_dict

        def write(tmp: Path) -> None:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
            self.cfg.to_yaml(tmp / CONFIG)
            if self.processor.has_data_stats:
                self.processor.normalizer.save(tmp / NORMALIZER)
            self.processor.text_tokenizer.save_pretrained(tmp / TEXT_TOKENIZER)
            if self.processor.fast_tokenizer is not None:
                self.processor.fast_tokenizer.save(tmp / FAST_TOKENIZER)

        atomic_dir(path, write, fsync=True)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> "KIPolicy":
        """Load a folder written by save_pretrained. `overrides` replace config fields (e.g. variant)."""
        path = Path(path)
        for name in (WEIGHTS, CONFIG, TEXT_TOKENIZER):
            if not (path / name).exists():
                raise FileNotFoundError(f"{path} is not a ki_vla checkpoint: {name} is missing")
        data = PolicyConfig.from_yaml(path / CONFIG).to_dict()
        data.update(overrides)
        data["text"]["pretrained"] = None  # the checkpoint holds the weights; never reload the source model
        cfg = PolicyConfig.from_dict(data)
        normalizer = Normalizer.load(path / NORMALIZER) if (path / NORMALIZER).exists() else None
        fast = None
        if (path / FAST_TOKENIZER).exists():
            from ki_vla.tokenizer.fast import FastTokenizer

            fast = FastTokenizer.load(path / FAST_TOKENIZER)
        text_tok = load_text_tokenizer(cfg.text.tokenizer, folder=path / TEXT_TOKENIZER)
        policy = cls(cfg, text_tokenizer=text_tok, fast_tokenizer=fast, normalizer=normalizer)
        try:
            try:
                weights = load_file(str(path / WEIGHTS))
            except Exception as exc:  # safetensors' own error types: a truncated or corrupt file
                raise ValueError(f"{path / WEIGHTS} is not a readable safetensors file (truncated or corrupt?): "
                                 f"{' '.join(str(exc).split())[:200]}") from exc
            policy.load_state_dict(weights, strict=True)
        except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
            raise ValueError(f"{path / WEIGHTS} does not match the config: {' '.join(str(exc).split())[:400]}") from exc
        return policy.to(device).eval()

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "KIPolicy":
        """A checkpoint folder, or a model YAML for a randomly initialized policy (tests, benchmarks)."""
        path = resolve(path)
        if path.is_dir():
            return cls.from_pretrained(path, device=device)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            msg = (f"RANDOMLY INITIALIZED policy from {path}: its actions are noise. "
                   "Use a trained checkpoint folder for anything but tests and benchmarks.")
            log.warning(msg)
            warnings.warn(msg, stacklevel=2)
            return cls(PolicyConfig.from_yaml(path)).to(device).eval()
        raise FileNotFoundError(f"model {path}: expected a checkpoint folder or a model .yaml file")


def smooth_chunk(rng: np.random.Generator, horizon: int, dims: int) -> np.ndarray:
    """A random action chunk shaped like a demonstration's: per joint, a sine of random frequency (0.2-1.5 cycles
    per chunk) and phase, in [-1, 1]. Smoothness matters where FAST tokens are counted: a fitted FAST tokenizer
    needs about 70 tokens for such a 50 x 14 chunk, as for real demonstrations, and far more for white noise."""
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    freq, phase = rng.uniform(0.2, 1.5, (1, dims)), rng.uniform(0.0, 1.0, (1, dims))
    return (0.9 * np.sin(2 * np.pi * (freq * t + phase))).astype(np.float32)


class _RandomFastIds:
    """Stands in for a FAST tokenizer in example_batch: a random-length run of valid FAST ids."""

    def __init__(self, vocab: int, rng: np.random.Generator) -> None:
        self.vocab, self.rng = vocab, rng

    def encode(self, chunk: np.ndarray) -> list[int]:
        return self.rng.integers(0, self.vocab, int(self.rng.integers(4, 12))).tolist()
