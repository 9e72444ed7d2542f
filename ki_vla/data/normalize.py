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

"""Normalization statistics and the `Normalizer` that maps states/actions to and from model units.

Statistics are computed once, when a dataset is written (or, for a dataset that has none, by
`compute_dataset_stats`), stored in the dataset's `meta/stats.json` in LeRobot's format
(`{feature: {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}}`, lists of floats) and
copied into a checkpoint with `Normalizer.to_dict()`, so inference never needs the dataset.

Quantile normalization (pi0.5 / openpi style) maps q01 -> -1 and q99 -> +1: robust to the rare outliers
teleoperation produces, unlike min/max. Nothing is clipped by default: a policy whose actions were clipped to
[q01, q99] could never command the outer 1% of a joint's range (the state's prompt bins clip on their own).
Dimensions whose range is (near) zero, such as a gripper that never moves in a dataset, are shifted by their centre
instead of divided by zero, so normalize/unnormalize stay exact inverses on the data they were fitted on.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ki_vla.atomic import write_json_atomic

# The LeRobot feature names of the robot's state and action: what stats, datasets and the model's processor key on.
STATE_KEY = "observation.state"
ACTION_KEY = "action"

QUANTILES: dict[str, float] = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", "count", *QUANTILES)
MODES: tuple[str, ...] = ("quantile", "mean_std", "min_max", "identity")

Stats = dict[str, dict[str, np.ndarray]]


def compute_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of an (N, D) array over its first axis (float64 accumulation, stored as float arrays)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"stats need a non-empty (N, D) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("stats input contains NaN or inf")
    stats = {
        "min": arr.min(axis=0),
        "max": arr.max(axis=0),
        "mean": arr.mean(axis=0),
        "std": arr.std(axis=0),
        "count": np.array([arr.shape[0]], dtype=np.int64),
    }
    qs = np.quantile(arr, list(QUANTILES.values()), axis=0)
    for name, q in zip(QUANTILES, qs):
        stats[name] = q
    return stats


def compute_image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (N, H, W, 3) uint8 frames, in [0, 1] with LeRobot's (3, 1, 1) shapes."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"image stats need (N, H, W, 3) frames, got shape {arr.shape}")
    pixels = arr.reshape(-1, 3).astype(np.float64) / 255.0
    flat = compute_stats(pixels)
    out = {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in flat.items()}
    out["count"] = np.array([arr.shape[0]], dtype=np.int64)
    return out


def aggregate_stats(stats_list: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode stats of one feature (exact min/max/mean/std; count-weighted quantiles).

    Quantiles cannot be merged exactly from summaries; the count-weighted mean of per-episode quantiles is
    what LeRobot does too. Use `compute_stats` on the concatenated data when it is at hand.
    """
    if not stats_list:
        raise ValueError("no stats to aggregate")
    counts = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in stats_list])
    total = counts.sum()
    if total <= 0:
        raise ValueError("stats to aggregate have zero total count")
    means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in stats_list])
    w = (counts / total).reshape(-1, *([1] * (means.ndim - 1)))
    mean = (means * w).sum(axis=0)
    var = ((np.stack([np.asarray(s["std"], dtype=np.float64) ** 2 for s in stats_list]) + (means - mean) ** 2) * w).sum(
        axis=0
    )
    out = {
        "min": np.min(np.stack([np.asarray(s["min"], dtype=np.float64) for s in stats_list]), axis=0),
        "max": np.max(np.stack([np.asarray(s["max"], dtype=np.float64) for s in stats_list]), axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for q in QUANTILES:
        if all(q in s for s in stats_list):
            out[q] = (np.stack([np.asarray(s[q], dtype=np.float64) for s in stats_list]) * w).sum(axis=0)
    return out


def stats_to_json(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Nested lists/ints/floats, as LeRobot's meta/stats.json holds them."""
    return {
        feature: {k: np.asarray(v).tolist() for k, v in fstats.items()} for feature, fstats in stats.items()
    }


def stats_from_json(data: Mapping[str, Mapping[str, Any]]) -> Stats:
    """Inverse of `stats_to_json`: numpy arrays (float64; count int64)."""
    out: Stats = {}
    for feature, fstats in data.items():
        if not isinstance(fstats, Mapping):
            raise ValueError(f"stats for {feature!r} must be a mapping of stat name to values")
        out[feature] = {
            k: np.asarray(v, dtype=np.int64 if k == "count" else np.float64) for k, v in fstats.items()
        }
    return out


def compute_dataset_stats(dataset: Any, keys: Sequence[str] = (STATE_KEY, ACTION_KEY)) -> Stats:
    """Exact stats of numeric features over a whole `LeRobotDataset` (for datasets shipped without stats).

    Reads only the numeric parquet columns, never the videos.
    """
    out: Stats = {}
    for key in keys:
        out[key] = compute_stats(dataset.column(key))
    return out


def _to_numpy(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


class Normalizer:
    """Per-feature affine normalization fitted from stats; works on numpy arrays and torch tensors.

    mode "quantile": q01 -> -1, q99 -> +1 (clipped to [-1, 1] when `clip`); "mean_std": (x - mean) / std;
    "min_max": min -> -1, max -> +1 (clipped when `clip`); "identity": unchanged. Only the last axis is
    feature-wise, so (D,), (T, D) and (B, T, D) inputs all work.
    """

    def __init__(
        self,
        stats: Mapping[str, Mapping[str, Any]],
        mode: str = "quantile",
        clip: bool = False,
        eps: float = 1e-6,
        modes: Mapping[str, str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"normalization mode must be one of {MODES}, got {mode!r}")
        for key, m in (modes or {}).items():
            if m not in MODES:
                raise ValueError(f"normalization mode for {key!r} must be one of {MODES}, got {m!r}")
        self.mode = mode
        self.modes = dict(modes or {})
        self.clip = bool(clip)
        self.eps = float(eps)
        self.stats: Stats = {k: {s: _to_numpy(v) for s, v in fs.items()} for k, fs in stats.items()}
        self._affine: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {}
        for key in self.stats:
            self._affine[key] = self._fit(key)

    def with_stats(self, key: str, stats: Mapping[str, Any]) -> Normalizer:
        """A copy with `key`'s stats replaced (same modes, clipping and eps)."""
        return Normalizer({**self.stats, key: stats}, mode=self.mode, clip=self.clip, eps=self.eps, modes=self.modes)

    def mode_for(self, key: str) -> str:
        """The normalization mode used for `key`."""
        return self.modes.get(key, self.mode)

    def _fit(self, key: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(centre, half_range, clip) such that y = (x - centre) / half_range."""
        s = self.stats[key]
        mode = self.mode_for(key)
        need = {"quantile": ("q01", "q99"), "mean_std": ("mean", "std"), "min_max": ("min", "max"), "identity": ()}[
            mode
        ]
        missing = [n for n in need if n not in s]
        if missing:
            raise ValueError(f"stats for {key!r} lack {missing} needed by {mode!r} normalization")
        if mode == "identity":
            shape = np.asarray(next(iter(s.values()))).shape if s else (1,)
            return np.zeros(shape), np.ones(shape), False
        if mode == "mean_std":
            centre, scale = s["mean"], s["std"].copy()
            clip = False
        else:
            lo, hi = (s["q01"], s["q99"]) if mode == "quantile" else (s["min"], s["max"])
            centre, scale = (hi + lo) / 2.0, (hi - lo) / 2.0
            clip = self.clip
        # Zero-range guard: such a dimension carries no information; shift it by its centre so it maps to 0
        # and round-trips exactly instead of blowing up to inf.
        scale = np.where(np.abs(scale) < self.eps, 1.0, scale)
        return np.asarray(centre, dtype=np.float64), np.asarray(scale, dtype=np.float64), clip

    def _params(self, key: str, x: Any) -> tuple[Any, Any, bool]:
        if key not in self._affine:
            raise ValueError(f"no normalization stats for {key!r}; have {sorted(self._affine)}")
        centre, scale, clip = self._affine[key]
        if x.shape[-1:] != centre.shape[-1:]:
            raise ValueError(f"{key!r} has {centre.shape[-1]} dims in the stats but the input has shape "
                             f"{tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return (
                torch.as_tensor(centre, dtype=dtype, device=x.device),
                torch.as_tensor(scale, dtype=dtype, device=x.device),
                clip,
            )
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return centre.astype(dtype), scale.astype(dtype), clip

    def normalize(self, key: str, x: Any) -> Any:
        """Real units -> model units for feature `key` (e.g. "observation.state", "action")."""
        x = x if isinstance(x, torch.Tensor) else np.asarray(x)
        centre, scale, clip = self._params(key, x)
        y = (x - centre) / scale
        if clip:
            y = y.clamp(-1.0, 1.0) if isinstance(y, torch.Tensor) else np.clip(y, -1.0, 1.0)
        return y

    def unnormalize(self, key: str, y: Any) -> Any:
        """Model units -> real units for feature `key` (inverse of `normalize` inside the clip range)."""
        y = y if isinstance(y, torch.Tensor) else np.asarray(y)
        centre, scale, _ = self._params(key, y)
        return y * scale + centre

    inverse = unnormalize

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form for checkpoints (`from_dict` restores an identical Normalizer)."""
        return {
            "mode": self.mode,
            "modes": dict(self.modes),
            "clip": self.clip,
            "eps": self.eps,
            "stats": stats_to_json(self.stats),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        """Restore from `to_dict()` output (also accepts a bare LeRobot stats.json mapping)."""
        if "stats" not in data:
            return cls(stats_from_json(data))
        return cls(
            stats_from_json(data["stats"]),
            mode=data.get("mode", "quantile"),
            clip=data.get("clip", False),
            eps=data.get("eps", 1e-6),
            modes=data.get("modes") or None,
        )

    def save(self, path: Path) -> None:
        """Atomically write `to_dict()` as JSON."""
        write_json_atomic(self.to_dict(), Path(path))

    @classmethod
    def load(cls, path: Path) -> Normalizer:
        """Read a file written by `save` (or a LeRobot meta/stats.json)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"normalizer file {path} does not exist")
        with open(path) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_dataset(
        cls, dataset: Any, keys: Sequence[str] = (STATE_KEY, ACTION_KEY), **kwargs: Any
    ) -> Normalizer:
        """Normalizer from a dataset's stored stats, computing them when the dataset has none."""
        stats = {k: dataset.stats[k] for k in keys if k in dataset.stats and "q01" in dataset.stats[k]}
        missing = [k for k in keys if k not in stats]
        if missing:
            stats.update(compute_dataset_stats(dataset, missing))
        return cls(stats, **kwargs)
