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
