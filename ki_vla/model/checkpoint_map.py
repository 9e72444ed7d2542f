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

"""Load a LeRobot/openpi-format pi0.5 PyTorch checkpoint (safetensors) into the `pi05` layout.

The documented key map (P = paligemma_with_expert.paligemma.model, E = paligemma_with_expert.gemma_expert.model):

  LeRobot / openpi key                                    ki_vla key
  [model.]P.language_model.<rest>                         backbone.language_model.<rest>
  [model.]P.vision_tower.vision_model.<rest>              backbone.vision_tower.<rest>
                                                          (transformers 5 SigLIP has no vision_model.)
  [model.]P.multi_modal_projector.linear.<w|b>            backbone.multi_modal_projector.linear.<w|b>
  [model.]paligemma_with_expert.paligemma.lm_head.weight  backbone.language_model.embed_tokens.weight (tied; used when
                                                          embed_tokens is absent, as safetensors keeps one tied name)
  [model.]E.layers.<rest> / E.norm.<rest>                 expert.layers.<rest> / expert.norm.<rest>
  [model.]action_in_proj / action_out_proj /              expert.action_in_proj / ...
          time_mlp_in / time_mlp_out
  dropped: paligemma_with_expert.gemma_expert.lm_head.weight (random, unused by the expert)

The leading `model.` appears in checkpoints saved by LeRobot's policy class and not in the openpi converter's
output; exactly one is stripped. pi0 (not pi0.5) checkpoints carry `state_proj.*` / `action_time_mlp_*` and
plain expert norm weights; they are rejected with a message rather than half-loaded.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ki_vla.model.config import BYTE_TOKENIZER_MAX_VOCAB, BYTE_TOKENIZERS

_P = "paligemma_with_expert.paligemma.model."
_E = "paligemma_with_expert.gemma_expert.model."
_RULES: list[tuple[str, str]] = [
    (re.escape(_P) + r"language_model\.", "backbone.language_model."),
    (re.escape(_P) + r"vision_tower\.vision_model\.", "backbone.vision_tower."),
    (re.escape(_P) + r"multi_modal_projector\.", "backbone.multi_modal_projector."),
    (re.escape(_E) + r"layers\.", "expert.layers."),
    (re.escape(_E) + r"norm\.", "expert.norm."),
    (r"(action_in_proj|action_out_proj|time_mlp_in|time_mlp_out)\.", r"expert.\1."),
]
_LM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
_DROPPED = ("paligemma_with_expert.gemma_expert.lm_head.weight",)
_PI0_ONLY = re.compile(r"^(state_proj\.|action_time_mlp_)")
_EMBED = "backbone.language_model.embed_tokens.weight"
_TOP_LEVEL = ("paligemma_with_expert.", "action_", "time_mlp_", "state_proj.")


def map_lerobot_pi05_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a LeRobot/openpi pi0.5 state dict to ki_vla's `pi05` names (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    lm_head = None
    unknown, pi0_keys = [], []
    for key, tensor in state.items():
        k = key[len("model."):] if key.startswith("model.") and key[len("model."):].startswith(_TOP_LEVEL) else key
        if k in _DROPPED:
            continue
        if k == _LM_HEAD:
            lm_head = tensor
            continue
        if _PI0_ONLY.match(k):
            pi0_keys.append(key)
            continue
        for pattern, repl in _RULES:
            new, n = re.subn("^" + pattern, repl, k, count=1)
            if n:
                out[new] = tensor
                break
        else:
            unknown.append(key)
    if pi0_keys:
        raise ValueError(f"this looks like a pi0 checkpoint, not pi0.5 (keys such as {pi0_keys[:3]}); "
                         "its expert has no adaRMS time conditioning")
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) are not part of the pi0.5 layout, e.g. {unknown[:5]}")
    if _EMBED not in out:
        if lm_head is None:
            raise ValueError("checkpoint has neither the language model's embed_tokens nor the tied lm_head")
        out[_EMBED] = lm_head
    return out


def load_lerobot_pi05(policy: torch.nn.Module, path: str | Path) -> None:
    """Load `path` (model.safetensors, or a folder holding it) into `policy` (built from config/model/pi05.yaml).

    Every parameter must be covered and every shape must match; otherwise a ValueError names the first few.
    """
    text = policy.cfg.text
    if text.tokenizer in BYTE_TOKENIZERS and text.vocab_size > BYTE_TOKENIZER_MAX_VOCAB:
        raise ValueError(f"pi0.5 weights read Gemma token ids; text.tokenizer {text.tokenizer!r} would feed them byte "
                         "ids. Set text.tokenizer to the PaliGemma tokenizer folder (tokenizer.json)")
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no safetensors checkpoint at {file}")
    mapped = map_lerobot_pi05_keys(load_file(str(file)))
    own = policy.state_dict()
    missing = sorted(set(own) - set(mapped))
    extra = sorted(set(mapped) - set(own))
    if missing or extra:
        raise ValueError(f"checkpoint does not fit the policy: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {extra[:5]} ({len(extra)})")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"shape mismatch for {len(bad)} tensor(s): {bad[:5]}")
    policy.load_state_dict(mapped, strict=True)
