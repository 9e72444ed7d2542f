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

"""Rolling rate and latency statistics for /diagnostics (plain Python: unit-tested without ROS).

Why windows instead of running means: a diagnostic should say how the node behaves now (last N events or
seconds), so a stall shows up within one report instead of being averaged away over an hour.
"""
from __future__ import annotations

from collections import deque

import numpy as np


class RateMeter:
    """Events per second over the last `window` seconds (callers pass their own clock, e.g. ROS time)."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._t: deque[float] = deque()
        self.total = 0

    def tick(self, now: float) -> None:
        self._t.append(now)
        self.total += 1
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._t) < 2:
            return 0.0
        span = max(now - self._t[0], self._t[-1] - self._t[0])
        return (len(self._t) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._t and self._t[0] < now - self.window:
            self._t.popleft()


class Window:
    """The last `size` samples of a quantity (latency, period, age) with percentiles."""

    def __init__(self, size: int = 500) -> None:
        self._v: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._v.append(float(value))

    def __len__(self) -> int:
        return len(self._v)

    def values(self) -> np.ndarray:
        return np.fromiter(self._v, dtype=np.float64, count=len(self._v))

    def percentiles(self, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
        """{"p50": ..., ...} in the samples' unit; NaN when empty (reported as "nan", never a crash)."""
        if not self._v:
            return {f"p{q:g}": float("nan") for q in qs}
        arr = self.values()
        return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(arr, qs))}

    def max(self) -> float:
        return max(self._v) if self._v else float("nan")


class Counter:
    """Named counters (e.g. rejection reasons) reported as key/values."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def inc(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def total(self) -> int:
        return sum(self.counts.values())
