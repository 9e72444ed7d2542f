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

"""Open-loop (bag replay) evaluation: predict a chunk from each recorded observation, compare it with what
the demonstrator actually did next.

Open-loop numbers are not closed-loop success (a policy can drift off the recorded states and recover, or
not), but they are cheap, deterministic and need no simulator, so they are the first check of a checkpoint
on real recordings. Everything here is in *real units* (radians, normalized gripper): errors are read
against the robot, not against normalization statistics that differ between datasets.

Layout of the arrays shared by the metric functions (N evaluated frames, horizon H, D action dims):
    pred    (N, H, D) predicted chunk for frame t: actions t .. t+H-1
    target  (N, H, D) recorded actions t .. t+H-1 (past the episode end: anything, masked out)
    valid   (N, H)    True where step t+k is inside the episode
    episode (N,)      episode index of each frame;   frame (N,) frame index within its episode
The inference loop (`run_open_loop`) produces them; the metric functions are pure numpy so they can be
checked on hand-made cases with known answers.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ki_vla.data.samples import ChunkDataset
from ki_vla.eval.percentiles import percentile_summary

# A predictor maps B observations {"images", "state", "instruction", "episode_index", "frame_index"} to a
# (B, H, D) array in real units. Observations never carry the recorded actions, so a predictor cannot peek.
Predictor = Callable[[Sequence[dict[str, Any]]], np.ndarray]


@dataclass
class OpenLoopResult:
    """Everything one replay produced; the metrics are computed from it by `summarize`."""

    pred: np.ndarray  # (N, H, D) float32
    target: np.ndarray  # (N, H, D) float32
    valid: np.ndarray  # (N, H) bool
    episode: np.ndarray  # (N,) int64
    frame: np.ndarray  # (N,) int64
    state: np.ndarray  # (N, Ds) float32, the recorded state at each evaluated frame
    batch_ms: np.ndarray  # (n_batches,) wall time of each predictor call
    batch_sizes: np.ndarray  # (n_batches,) observations in each call

    def __post_init__(self) -> None:
        _check_shapes(self.pred, self.target, self.valid)
        n = self.pred.shape[0]
        for name in ("episode", "frame", "state"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows, expected {n}")
        if self.batch_ms.shape != self.batch_sizes.shape:
            raise ValueError("batch_ms and batch_sizes must have the same length")


# ---- metric functions (pure numpy) ---------------------------------------------------------------------
def _check_shapes(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> None:
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must both be (N, horizon, dim)")
    if valid.shape != pred.shape[:2]:
        raise ValueError(f"valid has shape {valid.shape}, expected {pred.shape[:2]}")


def _masked_mean(values: np.ndarray, mask: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """Mean of `values` over `axis` counting only entries where `mask` (broadcast) is True; NaN where none are."""
    mask = np.broadcast_to(mask, values.shape)
    total = np.where(mask, values, 0.0).sum(axis=axis, dtype=np.float64)
    count = mask.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def chunk_errors(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Masked absolute and squared errors of predicted chunks.

    Returns overall `mae`/`mse` (mean over every valid (frame, step, joint)), `per_joint_mae`/`per_joint_mse`
    (D,) averaged over the chunk, and `mae_by_step`/`mse_by_step` (H,) averaged over frames and joints: how
    error grows with how far ahead the chunk predicts. `valid_by_step` (H,) counts the frames behind each
    step, because late steps of frames near an episode's end are masked and so rest on fewer samples.
    """
    _check_shapes(pred, target, valid)
    diff = pred.astype(np.float64) - target.astype(np.float64)
    abs_err, sq_err = np.abs(diff), diff**2
    m = valid[:, :, None]
    return {
        "mae": float(_masked_mean(abs_err, m, (0, 1, 2))),
        "mse": float(_masked_mean(sq_err, m, (0, 1, 2))),
        "per_joint_mae": _masked_mean(abs_err, m, (0, 1)),
        "per_joint_mse": _masked_mean(sq_err, m, (0, 1)),
        "mae_by_step": _masked_mean(abs_err, m, (0, 2)),
        "mse_by_step": _masked_mean(sq_err, m, (0, 2)),
        "valid_by_step": valid.sum(axis=0).astype(np.int64),
    }


def chunk_consistency(pred: np.ndarray, valid: np.ndarray, episode: np.ndarray, frame: np.ndarray) -> dict[str, Any]:
    """How much consecutive chunks disagree about the same future time step, in real units.

    For consecutive evaluated frames f < f' of one episode with offset d = f' - f < H, chunk f predicts time
    f' + j at its step j + d and chunk f' at its step j; we average |a^(f)[j+d] - a^(f')[j]| over the overlap
    j = 0 .. H-d-1, over joints and over pairs. Only time steps inside the episode count (the later chunk's
    `valid`). A policy whose successive plans agree is easy to execute smoothly (temporal ensembling and
    chunk switching both assume it); large values show up as jerks when the executor switches chunks.
    Returns `mean_abs_diff` and `per_joint` (NaN when no pair overlaps, e.g. stride >= horizon), `pairs`
    and `overlap_steps` (the number of compared (pair, step) entries).
    """
    n, h, d = pred.shape
    if valid.shape != (n, h) or episode.shape != (n,) or frame.shape != (n,):
        raise ValueError("chunk_consistency: valid must be (N, H), episode and frame (N,)")
    order = np.lexsort((frame, episode))
    total = np.zeros(d, np.float64)
    count = 0
    pairs = 0
    for a, b in zip(order[:-1], order[1:]):
        offset = int(frame[b] - frame[a])
        if episode[a] != episode[b] or offset <= 0 or offset >= h:
            continue
        overlap = h - offset
        mask = valid[b, :overlap]
        if not mask.any():
            continue
        diff = np.abs(pred[a, offset:].astype(np.float64) - pred[b, :overlap].astype(np.float64))[mask]
        total += diff.sum(axis=0)
        count += int(mask.sum())
        pairs += 1
    per_joint = total / count if count else np.full(d, np.nan)
    return {
        "mean_abs_diff": float(per_joint.mean()) if count else float("nan"),
        "per_joint": per_joint,
        "pairs": pairs,
        "overlap_steps": count,
    }


def latency_summary(batch_ms: np.ndarray, batch_sizes: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Inference latency. `batch_ms` percentiles are over calls of the nominal `batch_size` only (a short last
    batch is faster and would skew them); `per_chunk_ms` divides each call by its size, the amortized cost
    of one chunk. With batch_size 1 both equal the latency a robot sees per observation."""
    batch_ms, batch_sizes = np.asarray(batch_ms, np.float64), np.asarray(batch_sizes, np.int64)
    full = batch_ms[batch_sizes == batch_size]
    return {
        "batch_size": int(batch_size),
        "calls": int(batch_ms.size),
        "batch_ms": percentile_summary(full if full.size else batch_ms),
        "per_chunk_ms": percentile_summary(batch_ms / np.maximum(batch_sizes, 1)),
    }


def hold_baseline(state: np.ndarray, target: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Errors of "stay where you are": every step of the chunk is the current recorded state.

    Random or barely trained policies produce error numbers with no scale; this baseline gives them one
    (a useful policy must beat standing still). Requires absolute joint-position actions of the state's size.
    """
    if state.ndim != 2 or state.shape[1] != target.shape[2]:
        raise ValueError(f"hold baseline needs state (N, {target.shape[2]}), got {state.shape}")
    pred = np.broadcast_to(state[:, None, :], target.shape)
    return chunk_errors(np.ascontiguousarray(pred), target, valid)


def per_episode_summary(result: OpenLoopResult, episode_lengths: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """One row per episode: evaluated frames, MAE/MSE over its chunks, first-step MAE and consistency."""
    rows = []
    for ep in np.unique(result.episode):
        sel = result.episode == ep
        err = chunk_errors(result.pred[sel], result.target[sel], result.valid[sel])
        cons = chunk_consistency(result.pred[sel], result.valid[sel], result.episode[sel], result.frame[sel])
        row: dict[str, Any] = {
            "episode_index": int(ep),
            "frames_evaluated": int(sel.sum()),
            "mae": err["mae"],
            "mse": err["mse"],
            "mae_step0": float(err["mae_by_step"][0]),
            "consistency": cons["mean_abs_diff"],
        }
        if episode_lengths is not None and int(ep) in episode_lengths:
            row["length"] = int(episode_lengths[int(ep)])
        rows.append(row)
    return rows


def summarize(result: OpenLoopResult, batch_size: int, joint_names: Sequence[str] | None = None,
              episode_lengths: dict[int, int] | None = None) -> dict[str, Any]:
    """All open-loop metrics of one replay as plain data (numpy arrays for vectors; see `report.to_jsonable`)."""
    n, h, d = result.pred.shape
    if n == 0:
        raise ValueError("no frames were evaluated")
    names = list(joint_names) if joint_names is not None else [f"joint_{i}" for i in range(d)]
    if len(names) != d:
        raise ValueError(f"{len(names)} joint names for {d} action dims")
    err = chunk_errors(result.pred, result.target, result.valid)
    metrics: dict[str, Any] = {
        "frames_evaluated": int(n),
        "episodes_evaluated": int(np.unique(result.episode).size),
        "horizon": int(h),
        "action_dim": int(d),
        "joint_names": names,
        **err,
        "consistency": chunk_consistency(result.pred, result.valid, result.episode, result.frame),
        "latency_ms": latency_summary(result.batch_ms, result.batch_sizes, batch_size),
        "per_episode": per_episode_summary(result, episode_lengths),
    }
    if result.state.shape[1] == d:
        base = hold_baseline(result.state, result.target, result.valid)
        metrics["hold_baseline"] = {k: base[k] for k in ("mae", "mse", "per_joint_mae", "mae_by_step")}
    return metrics


# ---- the replay loop -----------------------------------------------------------------------------------
def select_frames(chunks: ChunkDataset, stride: int, max_frames: int | None = None) -> list[int]:
    """Flat sample indices of every `stride`-th frame of each episode (frame 0 included), in episode order,
    cut to the first `max_frames`. Episode order keeps consecutive chunks adjacent (consistency needs them)
    and lets the dataset's per-episode decode cache work."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    out: list[int] = []
    for ep in range(chunks.num_episodes):
        out.extend(chunks.episode_range(ep)[::stride])
    return out[:max_frames] if max_frames is not None else out


def policy_predictor(policy: Any, num_steps: int | None = None, seed: int = 0) -> Predictor:
    """Wrap a KIPolicy as a Predictor: one processor call + one `sample_actions` per batch, seeded noise."""
    device = policy.device
    generator = torch.Generator(device=device).manual_seed(int(seed))

    def predict(observations: Sequence[dict[str, Any]]) -> np.ndarray:
        batch = policy.processor(list(observations), with_targets=False, device=device)
        actions = policy.sample_actions(batch, num_steps=num_steps, generator=generator)
        return actions.float().cpu().numpy()  # .cpu() waits for the GPU, so timing covers the whole call

    return predict


def _observation(sample: dict[str, Any]) -> dict[str, Any]:
    """What the policy may see of a sample (never its future actions), as numpy."""
    return {
        "images": {cam: np.asarray(img) for cam, img in sample["images"].items()},
        "image_mask": {cam: bool(m) for cam, m in sample.get("image_mask", {}).items()},
        "state": np.asarray(sample["state"], np.float32),
        "instruction": sample["instruction"],
        "episode_index": int(sample["episode_index"]),
        "frame_index": int(sample["frame_index"]),
    }


def run_open_loop(chunks: ChunkDataset, predictor: Predictor, indices: Sequence[int], batch_size: int = 16,
                  progress: bool = True, warmup: bool = True) -> OpenLoopResult:
    """Predict a chunk at each sample index (batched) and collect predictions, recorded targets and timings.

    `warmup` runs the predictor once on the first observation before timing, so one-off costs (allocation,
    lazy init, CUDA kernels' first launch) do not land in the latency percentiles.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not indices:
        raise ValueError("no frames to evaluate")
    h = chunks.horizon
    preds, targets, valids, episodes, frames, states = [], [], [], [], [], []
    batch_ms: list[float] = []
    sizes: list[int] = []
    with tqdm(total=len(indices), desc="eval-bag", unit="frame", disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            samples = [chunks[int(i)] for i in indices[start: start + batch_size]]
            obs = [_observation(s) for s in samples]
            if warmup and start == 0:
                predictor(obs[:1])
            t0 = time.perf_counter()
            out = np.asarray(predictor(obs), np.float32)
            batch_ms.append((time.perf_counter() - t0) * 1e3)
            sizes.append(len(obs))
            expected = (len(obs), h, chunks.action_dim)
            if out.shape != expected:
                raise ValueError(f"predictor returned shape {out.shape}, expected {expected}")
            preds.append(out)
            targets.append(np.stack([np.asarray(s["actions"], np.float32) for s in samples]))
            valids.append(np.stack([~np.asarray(s["action_is_pad"], bool) for s in samples]))
            episodes.extend(int(s["episode_index"]) for s in samples)
            frames.extend(int(s["frame_index"]) for s in samples)
            states.append(np.stack([np.asarray(s["state"], np.float32) for s in samples]))
            bar.update(len(obs))
    return OpenLoopResult(
        pred=np.concatenate(preds), target=np.concatenate(targets), valid=np.concatenate(valids),
        episode=np.asarray(episodes, np.int64), frame=np.asarray(frames, np.int64), state=np.concatenate(states),
        batch_ms=np.asarray(batch_ms, np.float64), batch_sizes=np.asarray(sizes, np.int64),
    )
