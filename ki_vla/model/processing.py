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

"""Raw samples -> model batch: image resizing, the pi0.5 prompt, FAST targets, normalization.

Two kinds of samples share one batch (that is what co-training needs); `ki_vla.data.samples` and
`ki_vla.data.cotrain` produce both:
  robot  {"images": {cam: uint8 (H, W, 3)}, "state": (state_dim,), "instruction": str,
          "actions": (horizon, action_dim) real units (training only), "action_is_pad": (horizon,) bool}
  vlm    {"images": {...}, "is_vlm": True, "instruction" or "prompt": str, "answer": str}
  either may carry "image_mask": {cam: bool}; a camera that is absent or masked is zero with image_valid False.

Batch layout (all tensors; L_img = cameras x tokens per image):
  images (B, N_cam, 3, S, S) float in [-1, 1]     image_valid (B, N_cam) bool
  text_ids (B, L_txt) long, LEFT-padded            text_valid (B, L_txt) bool
  target_ids (B, L_tgt) long, right-padded         target_valid (B, L_tgt) bool  (CE positions)
  actions (B, H, max_action_dim) normalized (minus the state first, for `delta_actions`)
                                                   action_valid (B, H) bool (False: padding or no actions)
  state (B, state_dim) float normalized (zero for VLM samples; read by an expert with `expert.state_input`)
Left-padding the prompt puts the last prompt token at the end of the prefix, so the hidden state that
predicts the first target token is always at index L_prefix - 1.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from ki_vla.data.images import resize_for_model
from ki_vla.data.normalize import ACTION_KEY, STATE_KEY, Normalizer
from ki_vla.model.config import PolicyConfig
from ki_vla.observation import Observation

log = logging.getLogger(__name__)


def identity_normalizer(cfg: PolicyConfig) -> Normalizer:
    """Quantile stats of [-1, 1]: normalization is the identity (random models, tests, benchmarks)."""
    return Normalizer({STATE_KEY: {"q01": np.full(cfg.state_dim, -1.0), "q99": np.full(cfg.state_dim, 1.0)},
                       ACTION_KEY: {"q01": np.full(cfg.action_dim, -1.0), "q99": np.full(cfg.action_dim, 1.0)}})


def delta_action_mask(cfg: PolicyConfig) -> np.ndarray:
    """(action_dim,) 1.0 on the dims a delta-action model predicts relative to the state, 0.0 elsewhere."""
    mask = np.full(cfg.action_dim, 1.0 if cfg.delta_actions else 0.0, np.float32)
    mask[list(cfg.absolute_action_dims)] = 0.0
    return mask


def check_normalizer(normalizer: Normalizer, cfg: PolicyConfig) -> None:
    """Fail when stats do not describe this model's state/action sizes, before any batch is built."""
    for key, dim in ((STATE_KEY, cfg.state_dim), (ACTION_KEY, cfg.action_dim)):
        if key not in normalizer.stats:
            raise ValueError(f"normalization stats lack {key!r} (have {sorted(normalizer.stats)})")
        normalizer.normalize(key, np.zeros(dim, np.float32))  # raises a ValueError naming the mismatch


def check_fast_tokenizer(tokenizer: Any | None, cfg: PolicyConfig) -> None:
    """FAST id f maps to LM id `fast_lm_hi - f`: a tokenizer with more ids than the model reserves
    (`fast_vocab_size`) would map its top ids silently onto real text tokens."""
    size = getattr(tokenizer, "vocab_size", None)
    if size is not None and int(size) > cfg.fast_vocab_size:
        raise ValueError(f"the FAST tokenizer has {int(size)} ids but the model reserves {cfg.fast_vocab_size} "
                         "(fast_vocab_size in the model config; the train config's fast_vocab_size must not exceed it)")


def discretize_state(state_norm: np.ndarray, bins: int) -> np.ndarray:
    """Normalized state in [-1, 1] -> integer bins [0, bins) (pi0.5 puts these in the prompt as text)."""
    edges = np.linspace(-1.0, 1.0, bins + 1)[:-1]
    return np.clip(np.digitize(np.clip(state_norm, -1.0, 1.0), edges) - 1, 0, bins - 1)


def task_text(instruction: str) -> str:
    """The instruction as the prompt writes it (whitespace collapsed, underscores as spaces)."""
    return " ".join(instruction.strip().replace("_", " ").split())


def robot_prompt(instruction: str, state_bins: np.ndarray | None) -> str:
    """pi0.5's prompt; without state bins (`state_in_prompt: false`) the backbone sees the task alone."""
    task = task_text(instruction)
    if state_bins is None:
        return f"Task: {task};\nAction: "
    return f"Task: {task}, State: {' '.join(str(int(b)) for b in state_bins)};\nAction: "


class Processor:
    """Turns samples into batches and model outputs back into real units. Holds the tokenizers and stats."""

    def __init__(self, cfg: PolicyConfig, text_tokenizer: Any, fast_tokenizer: Any | None = None,
                 normalizer: Normalizer | None = None) -> None:
        self.cfg = cfg
        self.text_tokenizer = text_tokenizer
        check_fast_tokenizer(fast_tokenizer, cfg)
        self.fast_tokenizer = fast_tokenizer
        self.has_data_stats = normalizer is not None
        self.normalizer = normalizer if normalizer is not None else identity_normalizer(cfg)
        check_normalizer(self.normalizer, cfg)
        vocab = cfg.text.vocab_size
        # FAST id f <-> LM id vocab - 1 - skip - f (openpi): reuses rarely used ids at the vocab's end.
        self.fast_lm_hi = vocab - 1 - cfg.fast_skip_tokens
        self.fast_lm_lo = self.fast_lm_hi - (cfg.fast_vocab_size - 1)
        self.eos_id = int(text_tokenizer.eos_token_id)
        self.truncations = {"prompt": 0, "targets": 0}
        self.pad_id = int(text_tokenizer.pad_token_id)

    # ---- id mapping ------------------------------------------------------------------------------
    def fast_to_lm(self, fast_ids: Sequence[int]) -> list[int]:
        return [self.fast_lm_hi - int(f) for f in fast_ids]

    def lm_to_fast(self, lm_ids: Sequence[int]) -> list[int]:
        return [self.fast_lm_hi - int(i) for i in lm_ids]

    # ---- normalization ---------------------------------------------------------------------------
    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        return self.normalizer.normalize(STATE_KEY, np.asarray(state, np.float32)).astype(np.float32)

    def raw_state(self, state_norm: np.ndarray | torch.Tensor) -> np.ndarray:
        """The batch's normalized state back in real units (the frame delta actions are relative to)."""
        if isinstance(state_norm, torch.Tensor):
            state_norm = state_norm.detach().float().cpu().numpy()
        return self.normalizer.unnormalize(STATE_KEY, np.asarray(state_norm, np.float32)).astype(np.float32)

    def _offset(self, actions: np.ndarray, state: np.ndarray | None) -> np.ndarray | float:
        """What delta actions are relative to: the state on the delta dims, broadcast over the chunk axis."""
        if not self.cfg.delta_actions:
            return 0.0
        if state is None:
            raise ValueError("this model predicts delta actions: converting them needs the observation's state")
        state = np.asarray(state, np.float32)
        if state.shape[-1] != self.cfg.action_dim or state.shape[:-1] != actions.shape[:-2]:
            raise ValueError(f"state of shape {state.shape} does not fit actions of shape {actions.shape}")
        return state[..., None, :] * delta_action_mask(self.cfg)

    def normalize_actions(self, actions: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """Real-unit (..., H, action_dim) actions -> model units; `state` (..., action_dim) in real units is required
        (and only used) for a delta-action model."""
        actions = np.asarray(actions, np.float32)
        return self.normalizer.normalize(ACTION_KEY, actions - self._offset(actions, state)).astype(np.float32)

    def unnormalize_actions(self, actions: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """Inverse of `normalize_actions`."""
        out = self.normalizer.unnormalize(ACTION_KEY, np.asarray(actions, np.float32)).astype(np.float32)
        return (out + self._offset(out, state)).astype(np.float32)

    def _warn_once(self, kind: str, text: str) -> None:
        """Truncation repeats for every sample of a dataset: say it once, count the rest (`truncations`)."""
        self.truncations[kind] += 1
        if self.truncations[kind] == 1:
            log.warning("%s; further truncations are counted in Processor.truncations", text)

    # ---- batching --------------------------------------------------------------------------------
    def _image(self, img: Any, cam: str) -> tuple[np.ndarray, bool]:
        s = self.cfg.image_size
        if img is None:
            return np.zeros((3, s, s), np.float32), False
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"camera {cam!r}: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
        img = resize_for_model(img, s, self.cfg.image_resize)
        return (img.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1), True

    def _text_ids(self, text: str) -> list[int]:
        ids = self.text_tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.text_tokenizer.bos_token_id
        ids = ([bos] if bos is not None else []) + list(ids)
        if len(ids) > self.cfg.max_text_tokens:
            self._warn_once("prompt", f"prompt truncated from {len(ids)} to {self.cfg.max_text_tokens} tokens "
                                      "(raise max_text_tokens in the model config)")
            ids = ids[: self.cfg.max_text_tokens]
        return ids

    def _targets(self, sample: dict[str, Any], norm_actions: np.ndarray | None, is_vlm: bool) -> list[int]:
        if is_vlm:
            ids = list(self.text_tokenizer(str(sample["answer"]), add_special_tokens=False)["input_ids"])
        elif norm_actions is not None and self.cfg.trains_backbone_ce:
            if self.fast_tokenizer is None:
                raise ValueError("this variant trains on FAST tokens but no FAST tokenizer is fitted "
                                 "(run `ki-vla fit-tokenizer`, or let `ki-vla train` fit one)")
            ids = self.fast_to_lm(self.fast_tokenizer.encode(norm_actions))
        else:
            return []
        ids = ids + [self.eos_id]
        if len(ids) > self.cfg.max_target_tokens:
            self._warn_once("targets", f"targets truncated from {len(ids)} to {self.cfg.max_target_tokens} tokens "
                                       "(raise max_target_tokens in the model config)")
            ids = ids[: self.cfg.max_target_tokens]
        return ids

    def observation_batch(self, obs: Observation, device: torch.device | str) -> dict[str, torch.Tensor]:
        """One validated observation as a batch of one, without targets: what every predictor feeds its sampler."""
        obs.validate(self.cfg.camera_names, self.cfg.state_dim)
        return self([{"images": obs.images, "state": obs.state, "instruction": obs.instruction}], with_targets=False,
                    device=device)

    def __call__(self, samples: Sequence[dict[str, Any]], with_targets: bool = True,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if not samples:
            raise ValueError("empty batch")
        b, h = len(samples), cfg.horizon
        images = np.zeros((b, len(cfg.camera_names), 3, cfg.image_size, cfg.image_size), np.float32)
        image_valid = np.zeros((b, len(cfg.camera_names)), bool)
        text_ids = np.full((b, cfg.max_text_tokens), self.pad_id, np.int64)
        text_valid = np.zeros((b, cfg.max_text_tokens), bool)
        target_ids = np.full((b, cfg.max_target_tokens), self.pad_id, np.int64)
        target_valid = np.zeros((b, cfg.max_target_tokens), bool)
        actions = np.zeros((b, h, cfg.max_action_dim), np.float32)
        action_valid = np.zeros((b, h), bool)
        states = np.zeros((b, cfg.state_dim), np.float32)
        # The instruction's own tokens (expert.instruction_input), right-padded: the expert's direct path reads them
        # without the prompt's state digits, which vary every frame and would drown a one-word difference.
        instr_ids = np.full((b, cfg.max_text_tokens), self.pad_id, np.int64) if cfg.expert.instruction_input else None
        instr_valid = np.zeros((b, cfg.max_text_tokens), bool) if cfg.expert.instruction_input else None
        for i, sample in enumerate(samples):
            cams = sample.get("images") or {}
            masks = sample.get("image_mask") or {}
            for j, cam in enumerate(cfg.camera_names):
                img = cams.get(cam) if bool(masks.get(cam, True)) else None
                images[i, j], image_valid[i, j] = self._image(img, cam)
            norm_actions = None
            is_vlm = bool(sample.get("is_vlm", "prompt" in sample))
            if is_vlm:
                prompt = str(sample.get("prompt", sample.get("instruction", "")))
            else:
                state = np.asarray(sample["state"], np.float32)
                if state.shape != (cfg.state_dim,):
                    raise ValueError(f"state has shape {state.shape}, expected ({cfg.state_dim},)")
                states[i] = self.normalize_state(state)
                bins = discretize_state(states[i], cfg.state_bins) if cfg.state_in_prompt else None
                prompt = robot_prompt(str(sample["instruction"]), bins)
                if with_targets and sample.get("actions") is not None:
                    raw = np.asarray(sample["actions"], np.float32)
                    if raw.shape != (h, cfg.action_dim):
                        raise ValueError(f"actions have shape {raw.shape}, expected ({h}, {cfg.action_dim})")
                    norm_actions = self.normalize_actions(raw, state)
                    actions[i, :, : cfg.action_dim] = norm_actions
                    pad = sample.get("action_is_pad")
                    action_valid[i] = True if pad is None else ~np.asarray(pad, bool)
            ids = self._text_ids(prompt)
            text_ids[i, cfg.max_text_tokens - len(ids):] = ids
            text_valid[i, cfg.max_text_tokens - len(ids):] = True
            if instr_ids is not None:
                task = prompt if is_vlm else task_text(str(sample["instruction"]))
                tid = list(self.text_tokenizer(task, add_special_tokens=False)["input_ids"])[: cfg.max_text_tokens]
                instr_ids[i, : len(tid)] = tid
                instr_valid[i, : len(tid)] = True
            if with_targets:
                tgt = self._targets(sample, norm_actions, is_vlm)
                target_ids[i, : len(tgt)] = tgt
                target_valid[i, : len(tgt)] = True
        batch = {"images": images, "image_valid": image_valid, "text_ids": text_ids, "text_valid": text_valid,
                 "target_ids": target_ids, "target_valid": target_valid, "actions": actions,
                 "action_valid": action_valid, "state": states}
        if instr_ids is not None:
            batch.update(instruction_ids=instr_ids, instruction_valid=instr_valid)
        return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


def trim_padding(batch: dict[str, torch.Tensor], multiple: int = 8) -> dict[str, torch.Tensor]:
    """Drop the prompt and target columns that are padding in every sample of the batch.

    The processor pads to the config's token budgets (pi05: 200 prompt + 180 target slots for typically ~60 + ~70
    real tokens), and every padded column costs a full backbone token in training. Dropping them is exact: prompts
    are left-padded and targets right-padded, masks never let a valid token see padding, and RoPE positions count
    valid tokens only. The kept lengths are rounded up to `multiple` (tensor-core friendly shapes). Static-shape
    consumers (the inference engine) keep the full budget instead.
    """
    def keep(valid: torch.Tensor, left_padded: bool) -> int:
        cols = valid.any(0)
        if not bool(cols.any()):
            return min(valid.shape[1], multiple)
        first_used = int(cols.flip(0).long().argmax()) if not left_padded else int(cols.long().argmax())
        used = valid.shape[1] - first_used  # left-padded: columns from the first used; right: up to the last used
        return min(valid.shape[1], -(-used // multiple) * multiple)

    out = dict(batch)
    n = keep(batch["text_valid"], left_padded=True)
    out["text_ids"], out["text_valid"] = batch["text_ids"][:, -n:], batch["text_valid"][:, -n:]
    if "target_valid" in batch:
        n = keep(batch["target_valid"], left_padded=False)
        out["target_ids"], out["target_valid"] = batch["target_ids"][:, :n], batch["target_valid"][:, :n]
    return out
