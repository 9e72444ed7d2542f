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

"""Normalization stats and the Normalizer: exact stats, quantile/mean-std round trips, zero-range guard, JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ki_vla.data.normalize import (
    Normalizer,
    aggregate_stats,
    compute_image_stats,
    compute_stats,
    stats_from_json,
    stats_to_json,
)


def data(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) * np.array([1.0, 10.0, 0.1, 1.0]) + np.array([0.0, 5.0, -2.0, 0.0])
    x[:, 3] = 0.7  # a joint that never moves
    return x


def test_compute_stats_matches_numpy() -> None:
    x = data()
    s = compute_stats(x)
    np.testing.assert_allclose(s["mean"], x.mean(0))
    np.testing.assert_allclose(s["std"], x.std(0))
    np.testing.assert_allclose(s["min"], x.min(0))
    np.testing.assert_allclose(s["max"], x.max(0))
    for name, q in (("q01", 0.01), ("q10", 0.1), ("q50", 0.5), ("q90", 0.9), ("q99", 0.99)):
        np.testing.assert_allclose(s[name], np.quantile(x, q, axis=0))
    assert s["count"].tolist() == [2000]
    with pytest.raises(ValueError, match="NaN"):
        compute_stats(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="non-empty"):
        compute_stats(np.zeros((0, 3)))


def test_aggregate_stats_is_exact_for_moments() -> None:
    x = data()
    parts = [x[:300], x[300:1700], x[1700:]]
    agg = aggregate_stats([compute_stats(p) for p in parts])
    np.testing.assert_allclose(agg["mean"], x.mean(0), atol=1e-12)
    np.testing.assert_allclose(agg["std"], x.std(0), atol=1e-12)
    np.testing.assert_allclose(agg["min"], x.min(0))
    assert agg["count"].tolist() == [2000]
    assert np.all(np.abs(agg["q50"] - np.quantile(x, 0.5, axis=0)) < 0.2 * x.std(0) + 1e-9)


def test_image_stats_shape_and_scale() -> None:
    frames = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    frames[..., 0] = 255
    frames[1, ..., 1] = 51
    s = compute_image_stats(frames)
    assert s["mean"].shape == (3, 1, 1) and s["count"].tolist() == [2]
    np.testing.assert_allclose(s["mean"].reshape(3), [1.0, 0.1, 0.0])
    np.testing.assert_allclose(s["max"].reshape(3), [1.0, 0.2, 0.0])


@pytest.mark.parametrize("mode", ["quantile", "mean_std", "min_max"])
def test_round_trip_numpy_and_torch(mode: str) -> None:
    x = data()
    norm = Normalizer({"action": compute_stats(x)}, mode=mode)
    inside = x[(x >= compute_stats(x)["q01"]).all(1) & (x <= compute_stats(x)["q99"]).all(1)]
    y = norm.normalize("action", inside)
    np.testing.assert_allclose(norm.unnormalize("action", y), inside, atol=1e-9)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[:, 3], 0.0, atol=1e-9)  # zero-range dim maps to 0, no division by zero
    xt = torch.tensor(inside[:10], dtype=torch.float32).reshape(2, 5, 4)  # (B, T, D) works too
    yt = norm.normalize("action", xt)
    assert yt.dtype == torch.float32 and yt.shape == (2, 5, 4)
    torch.testing.assert_close(norm.unnormalize("action", yt), xt, atol=1e-4, rtol=1e-5)


def test_quantile_maps_q01_q99_to_unit_and_does_not_clip_by_default() -> None:
    """A clipped action normalizer could never command the outer 1% of a joint's range (the sim-success issue)."""
    x = data()
    s = compute_stats(x)
    norm = Normalizer({"action": s}, mode="quantile")
    np.testing.assert_allclose(norm.normalize("action", s["q01"])[:3], -1.0)
    np.testing.assert_allclose(norm.normalize("action", s["q99"])[:3], 1.0)
    far = s["q99"] + 100.0
    assert np.all(norm.normalize("action", far)[:3] > 1.0)
    np.testing.assert_allclose(norm.unnormalize("action", norm.normalize("action", far)), far)
    assert not Normalizer.from_dict(norm.to_dict()).clip
    clipped = Normalizer({"action": s}, mode="quantile", clip=True)
    np.testing.assert_allclose(clipped.normalize("action", far), [1.0, 1.0, 1.0, 1.0])


def test_mean_std_standardizes() -> None:
    x = data()
    y = Normalizer({"s": compute_stats(x)}, mode="mean_std").normalize("s", x)
    np.testing.assert_allclose(y[:, :3].mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(y[:, :3].std(0), 1.0, atol=1e-9)


def test_to_dict_from_dict_json_and_file(tmp_path: Path) -> None:
    x = data()
    norm = Normalizer({"action": compute_stats(x), "observation.state": compute_stats(x * 2)},
                      modes={"observation.state": "mean_std"})
    blob = json.dumps(norm.to_dict())  # must be plain JSON
    back = Normalizer.from_dict(json.loads(blob))
    assert back.mode == "quantile" and back.mode_for("observation.state") == "mean_std"
    np.testing.assert_allclose(back.normalize("action", x), norm.normalize("action", x))
    np.testing.assert_allclose(back.normalize("observation.state", x), norm.normalize("observation.state", x))
    norm.save(tmp_path / "norm.json")
    np.testing.assert_allclose(Normalizer.load(tmp_path / "norm.json").normalize("action", x),
                               norm.normalize("action", x))
    # A bare LeRobot meta/stats.json also loads.
    (tmp_path / "stats.json").write_text(json.dumps(stats_to_json({"action": compute_stats(x)})))
    np.testing.assert_allclose(Normalizer.load(tmp_path / "stats.json").normalize("action", x),
                               norm.normalize("action", x))
    assert stats_from_json(stats_to_json({"a": compute_stats(x)}))["a"]["q99"].shape == (4,)


def test_errors_name_the_problem() -> None:
    s = compute_stats(data())
    with pytest.raises(ValueError, match="mode must be one of"):
        Normalizer({"a": s}, mode="zscore")
    with pytest.raises(ValueError, match="no normalization stats for 'b'"):
        Normalizer({"a": s}).normalize("b", np.zeros(4))
    with pytest.raises(ValueError, match="4 dims"):
        Normalizer({"a": s}).normalize("a", np.zeros(3))
    with pytest.raises(ValueError, match="lack \\['q01', 'q99'\\]"):
        Normalizer({"a": {"mean": s["mean"], "std": s["std"]}})
