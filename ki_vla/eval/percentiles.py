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

"""The latency summary every report prints (numpy only: the ROS-side evaluator imports it too)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def percentile_summary(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean/max of a sample (NaN for an empty one), keyed `p50` ... as the reports print them."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {**{f"p{q}": float("nan") for q in PERCENTILES}, "mean": float("nan"), "max": float("nan")}
    out = {f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES}
    out.update(mean=float(v.mean()), max=float(v.max()))
    return out
