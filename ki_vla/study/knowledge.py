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

"""How much of the pretrained language model a trained backbone keeps: next-token KL on held-out English and
factual cloze completions, both read through the backbone's own layers (`VLMBackbone.forward`, causal mask), so
the numbers describe exactly the weights the policy serves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ki_vla.model.attention import block_causal_mask, positions_from_valid
from ki_vla.model.backbone import VLMBackbone

MAX_TOKENS = 256  # per text window: the paragraphs are shorter, so each is read whole


def _ids(tokenizer, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + ids


@torch.no_grad()
def log_probs(backbone: VLMBackbone, ids: list[int]) -> torch.Tensor:
    """(L, vocab) float32 next-token log-probabilities after each of `ids` (a causal language-model pass)."""
    device = backbone.language_model.embed_tokens.weight.device
    x = torch.tensor([ids[:MAX_TOKENS]], device=device)
    valid = torch.ones_like(x, dtype=torch.bool)
    mask = block_causal_mask(valid, torch.ones_like(x))  # every token its own block: plain causal attention
    hidden, _ = backbone(backbone.embed_tokens(x), mask, positions_from_valid(valid))
    return F.log_softmax(backbone.logits(hidden[0]).float(), dim=-1)


@dataclass
class Reference:
    """The pretrained model's answers, computed once before training: per-paragraph log-probabilities and the
    cloze prompts it completes correctly (the kept set)."""

    english: list[torch.Tensor]
    cloze_kept: list[int]
    cloze_total: int


def cloze_correct(backbone: VLMBackbone, tokenizer, prompt: str, answer: str) -> bool:
    """Greedy completion equals every token of `answer` (teacher-forced: each answer token is the argmax)."""
    p_ids = _ids(tokenizer, prompt)
    a_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    lp = log_probs(backbone, p_ids + a_ids)
    guesses = lp[len(p_ids) - 1: len(p_ids) - 1 + len(a_ids)].argmax(-1).tolist()
    return guesses == a_ids


def reference(backbone: VLMBackbone, tokenizer, english: tuple[str, ...],
              cloze: tuple[tuple[str, str], ...]) -> Reference:
    lps = [log_probs(backbone, _ids(tokenizer, text)) for text in english]
    kept = [i for i, (p, a) in enumerate(cloze) if cloze_correct(backbone, tokenizer, p, a)]
    return Reference(lps, kept, len(cloze))


def retention(backbone: VLMBackbone, tokenizer, ref: Reference, english: tuple[str, ...],
              cloze: tuple[tuple[str, str], ...]) -> dict[str, float]:
    """{"kl": mean over tokens of KL(pretrained || trained) in nats, "english_nll_delta": mean change of the
    next-token loss on the text itself, "cloze_acc": fraction of the kept cloze prompts still completed}."""
    kl_sum, nll_delta, n = 0.0, 0.0, 0
    for text, ref_lp in zip(english, ref.english, strict=True):
        ids = _ids(tokenizer, text)
        lp = log_probs(backbone, ids)
        kl_sum += float(F.kl_div(lp, ref_lp, log_target=True, reduction="sum"))
        nxt = torch.tensor(ids[1: MAX_TOKENS + 1], device=lp.device)
        rows = torch.arange(len(nxt), device=lp.device)
        nll_delta += float(ref_lp[rows, nxt].sum() - lp[rows, nxt].sum())
        n += len(nxt)
    kept = [cloze[i] for i in ref.cloze_kept]
    correct = sum(cloze_correct(backbone, tokenizer, p, a) for p, a in kept)
    return {"kl": kl_sum / max(n, 1), "english_nll_delta": nll_delta / max(n, 1),
            "cloze_acc": correct / len(kept) if kept else float("nan")}
