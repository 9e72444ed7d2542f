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

"""Action learning and language following on held-out episodes: sampled chunks against the demonstrations.

The error is the mean squared difference in real units (radians, gripper fraction) over the chunk's valid steps,
with the same flow noise for every variant and checkpoint (a seeded generator), so differences come from the
weights alone. Language following swaps the colour word of the instruction: a policy that ignores the instruction
scores the same on both.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from ki_vla.data.samples import ChunkDataset
from ki_vla.model.policy import KIPolicy

_SWAP = {"red": "blue", "blue": "red"}


def swap_colour(instruction: str) -> str:
    """Swap the colour word: "transfer the red cube" -> "transfer the blue cube".

    An instruction without a colour word is refused (the swap would compare a prompt with itself)."""
    swapped, n = re.subn(r"\b(red|blue)\b", lambda m: _SWAP[m.group(1)], instruction)
    if n == 0:
        raise ValueError(f"instruction {instruction!r} names no colour to swap (language following needs "
                         "transfer_color data)")
    return swapped


def held_out_samples(val: ChunkDataset, per_episode: int) -> list[dict[str, Any]]:
    """`per_episode` evenly spaced frames of every held-out episode, its first frame included (before the arm
    moves, only the image and the instruction say where to go)."""
    if per_episode < 1:
        raise ValueError(f"per_episode must be >= 1, got {per_episode}")
    out = []
    for ep in range(val.num_episodes):
        frames = val.episode_range(ep)
        picks = np.linspace(0, len(frames) - 1, per_episode).round().astype(int)
        out.extend(val[frames[int(k)]] for k in sorted(set(picks.tolist())))
    return out


def hold_still_error(samples: list[dict[str, Any]]) -> float:
    """The error of a chunk that repeats the current state: what a policy that learned nothing scores (the
    study's target MSE is a fraction of it)."""
    errs = [_mse(np.repeat(s["state"].numpy()[None], len(s["actions"]), 0), s) for s in samples]
    return float(np.mean(errs))


def _mse(pred: np.ndarray, sample: dict[str, Any]) -> float:
    valid = ~sample["action_is_pad"].numpy()
    return float(((pred[valid] - sample["actions"].numpy()[valid]) ** 2).mean())


@torch.no_grad()
def action_errors(policy: KIPolicy, samples: list[dict[str, Any]], seed: int = 0, swap: bool = False,
                  batch_size: int = 16) -> np.ndarray:
    """(N,) per-sample action MSE in real units of the policy's chunks (instructions colour-swapped with swap)."""
    was_training = policy.training
    policy.eval()
    errs: list[float] = []
    try:
        gen = torch.Generator(device=policy.device).manual_seed(seed)
        for i in range(0, len(samples), batch_size):
            part = samples[i: i + batch_size]
            inputs = [{**s, "instruction": swap_colour(s["instruction"]) if swap else s["instruction"]} for s in part]
            batch = policy.processor(inputs, with_targets=False, device=policy.device)
            pred = policy.sample_actions(batch, generator=gen).cpu().numpy()
            errs.extend(_mse(p, s) for p, s in zip(pred, part, strict=True))
    finally:
        policy.train(was_training)
    return np.asarray(errs)
