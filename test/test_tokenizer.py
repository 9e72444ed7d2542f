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

"""FAST tokenizer: accuracy, compression, id range, persistence and the never-raise decode contract.

The data are synthetic smooth chunks (50 x 14: a few low-frequency sinusoids per joint + small noise,
clipped to [-1, 1]), the regime quantile-normalized robot actions live in. One tokenizer is fitted per
module (vocab 1024 on 1000 chunks, well under a second) and shared by the tests.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ki_vla.tokenizer.fast import FastTokenizer

HORIZON, DIM = 50, 14
SCALE = 10.0
# Rounding to a step of 1/scale in the orthonormal DCT domain gives at most uniform error, RMS
# (1/scale)/sqrt(12) = 0.0289 at scale 10; the orthonormal IDCT carries that RMS to action space
# unchanged. Small coefficients that round to 0 err by less, so the real value sits below this.
# The bound adds 20 % for coefficients clipped to the fitted range on held-out data.
RMS_BOUND = 1.2 * (1.0 / SCALE) / math.sqrt(12.0)


def smooth_chunks(n: int, seed: int, horizon: int = HORIZON, dim: int = DIM) -> np.ndarray:
    """Sums of 3 random sinusoids (0..1.5 cycles per chunk) + offset + N(0, 0.01) noise, clipped to [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None, None]
    freq = rng.uniform(0.0, 1.5, (n, 1, dim, 3))
    amp = rng.uniform(0.0, 0.5, (n, 1, dim, 3))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1, dim, 3))
    offset = rng.uniform(-0.5, 0.5, (n, 1, dim))
    x = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(-1) + offset + rng.normal(0.0, 0.01, (n, horizon, dim))
    return np.clip(x, -1.0, 1.0)


@pytest.fixture(scope="module")
def tok() -> FastTokenizer:
    return FastTokenizer.fit(smooth_chunks(1000, seed=0), vocab_size=1024, scale=SCALE, min_frequency=2)


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return smooth_chunks(100, seed=1)


def test_round_trip_error_is_within_quantization_bound(tok: FastTokenizer, held_out: np.ndarray) -> None:
    decoded = []
    for chunk in held_out:
        out, ok = tok.decode_with_status(tok.encode(chunk), HORIZON, DIM)
        assert ok
        assert out.shape == (HORIZON, DIM) and out.dtype == np.float32
        decoded.append(out)
    err = np.stack(decoded) - held_out
    rms = float(np.sqrt(np.mean(err**2)))
    assert rms < RMS_BOUND, f"round-trip RMS {rms:.4f} >= bound {RMS_BOUND:.4f}"
    # The error really is quantization, not a shape/order bug: the worst sample stays small too.
    assert float(np.abs(err).max()) < 0.25


def test_compresses_smooth_chunks(tok: FastTokenizer, held_out: np.ndarray) -> None:
    lengths = [len(ids) for ids in tok.encode_batch(held_out)]
    # 700 coefficients per chunk; BPE over mostly-zero high frequencies gives ~70 tokens (10x).
    assert np.mean(lengths) < HORIZON * DIM / 5, f"mean tokens {np.mean(lengths):.1f}"
    assert max(lengths) < HORIZON * DIM / 3


def test_ids_in_range_and_batch_matches_single(tok: FastTokenizer, held_out: np.ndarray) -> None:
    assert 0 < tok.vocab_size <= 1024
    batch = tok.encode_batch(held_out[:20])
    for chunk, ids in zip(held_out[:20], batch):
        assert ids == tok.encode(chunk)
        assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)


def test_out_of_range_chunk_is_clipped_not_rejected(tok: FastTokenizer) -> None:
    wild = np.full((HORIZON, DIM), 5.0)  # far outside the normalized range the tokenizer was fitted on
    ids = tok.encode(wild)
    assert all(0 <= i < tok.vocab_size for i in ids)
    out, ok = tok.decode_with_status(ids, HORIZON, DIM)
    assert ok and np.all(np.isfinite(out))
    # The DC coefficient is clipped to the fitted maximum, so the decoded level is bounded by it.
    assert float(out.max()) <= tok.max_value / tok.scale / math.sqrt(HORIZON) + 1e-4


def test_decode_accepts_numpy_and_torch_ids(tok: FastTokenizer, held_out: np.ndarray) -> None:
    ids = tok.encode(held_out[0])
    ref = tok.decode(ids, HORIZON, DIM)
    for alt in (np.asarray(ids, dtype=np.int64), torch.tensor(ids), tuple(ids)):
        out, ok = tok.decode_with_status(alt, HORIZON, DIM)
        assert ok and np.array_equal(out, ref)


def test_save_load_gives_identical_encodings(tok: FastTokenizer, held_out: np.ndarray, tmp_path: Path) -> None:
    tok.save(tmp_path / "fast")
    assert sorted(p.name for p in (tmp_path / "fast").iterdir()) == ["fast_bpe.json", "fast_config.json"]
    loaded = FastTokenizer.load(tmp_path / "fast")
    assert loaded.vocab_size == tok.vocab_size
    assert (loaded.scale, loaded.min_value, loaded.max_value) == (tok.scale, tok.min_value, tok.max_value)
    assert loaded.encode_batch(held_out) == tok.encode_batch(held_out)
    ids = tok.encode(held_out[3])
    assert np.array_equal(loaded.decode(ids, HORIZON, DIM), tok.decode(ids, HORIZON, DIM))
    # Saving again over the same folder replaces the files cleanly (no temporary files left behind).
    loaded.save(tmp_path / "fast")
    assert len(list((tmp_path / "fast").iterdir())) == 2


def test_load_rejects_mismatched_or_missing_files(tok: FastTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    bpe = tmp_path / "fast_bpe.json"
    bpe.write_text(bpe.read_text(encoding="utf-8").replace('"merges"', '"merges" ', 1), encoding="utf-8")
    with pytest.raises(ValueError, match="does not match"):
        FastTokenizer.load(tmp_path)
    bpe.unlink()
    with pytest.raises(FileNotFoundError):
        FastTokenizer.load(tmp_path)


def _assert_fallback(tok: FastTokenizer, ids: object, caplog: pytest.LogCaptureFixture) -> np.ndarray:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ki_vla.tokenizer"):
        out, ok = tok.decode_with_status(ids, HORIZON, DIM)
    assert ok is False, f"ids {ids!r:.80} were accepted"
    assert out.shape == (HORIZON, DIM) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert any(r.name == "ki_vla.tokenizer" and r.levelno == logging.WARNING for r in caplog.records)
    return out


@pytest.mark.parametrize(
    "ids",
    [
        [],
        None,
        "abc",
        b"\x00\x01",
        42,
        [1.5, 2.0],
        [True, False],
        [-1],
        [10**9],
        [0, 1, "x"],
        [[1, 2], [3]],
        [object()],
        np.array([1.0, 2.0]),
        torch.tensor([-3, 4]),
        [float("nan")],
    ],
    ids=lambda v: type(v).__name__,
)
def test_malformed_ids_return_zeros_with_flag(
    tok: FastTokenizer, ids: object, caplog: pytest.LogCaptureFixture
) -> None:
    out = _assert_fallback(tok, ids, caplog)
    assert not out.any()  # undecodable input gives the normalized-space mean, zeros
    assert not tok.decode(ids, HORIZON, DIM).any()  # the plain decode never raises either


def test_wrong_length_is_padded_or_truncated_and_flagged(
    tok: FastTokenizer, held_out: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    ids = tok.encode(held_out[0])
    full = tok.decode(ids, HORIZON, DIM)
    # Too long: the extra coefficients are dropped, so the true chunk comes back exactly.
    longer = _assert_fallback(tok, ids + ids, caplog)
    assert np.allclose(longer, full, atol=1e-6)
    # Too short: missing coefficients (the highest frequencies) are zero-padded; the estimate stays close.
    shorter = _assert_fallback(tok, ids[: len(ids) // 2], caplog)
    assert shorter.any()
    # Correct length but decoded for a different shape: also flagged, still finite.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ki_vla.tokenizer"):
        out, ok = tok.decode_with_status(ids, HORIZON, DIM + 1)
    assert not ok and out.shape == (HORIZON, DIM + 1) and np.all(np.isfinite(out))


@pytest.mark.parametrize("horizon,dim", [(0, DIM), (-1, DIM), (HORIZON, None), (2.5, DIM), (10**9, 10**9)])
def test_invalid_shape_never_raises(tok: FastTokenizer, horizon: object, dim: object) -> None:
    out, ok = tok.decode_with_status([1, 2, 3], horizon, dim)  # type: ignore[arg-type]
    assert ok is False and out.size == 0 and out.dtype == np.float32


def test_random_id_fuzz_never_raises(tok: FastTokenizer, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(7)
    n_ok = 0
    with caplog.at_level(logging.ERROR, logger="ki_vla.tokenizer"):  # silence the 200 expected warnings
        for _ in range(200):
            length = int(rng.integers(0, 300))
            ids = rng.integers(-5, tok.vocab_size + 5, size=length).tolist()
            out, ok = tok.decode_with_status(ids, HORIZON, DIM)
            assert out.shape == (HORIZON, DIM) and out.dtype == np.float32 and np.all(np.isfinite(out))
            in_range = length > 0 and all(0 <= i < tok.vocab_size for i in ids)
            if not in_range:
                assert not ok and not out.any()
            n_ok += ok
    # Random in-range ids almost never spell exactly 700 coefficients; any that do are valid chunks.
    assert n_ok <= 5


@pytest.mark.parametrize(
    "chunks,match",
    [
        (np.zeros((HORIZON, DIM)), "ndim"),
        (np.zeros((2, 3, HORIZON, DIM)), "ndim"),
        (np.zeros((0, HORIZON, DIM)), "non-empty"),
        (np.full((4, HORIZON, DIM), np.nan), "NaN"),
        (np.full((4, HORIZON, DIM), np.inf), "NaN or infinite"),
        (np.zeros((4, HORIZON, DIM)) + 100.0, "vocab_size"),  # un-normalized: range does not fit the vocab
    ],
    ids=["2d", "4d", "empty", "nan", "inf", "unnormalized"],
)
def test_fit_rejects_bad_input(chunks: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FastTokenizer.fit(chunks, vocab_size=256)


@pytest.mark.parametrize("kwargs", [{"vocab_size": 0}, {"scale": 0.0}, {"scale": float("nan")}, {"min_frequency": 0}])
def test_fit_rejects_bad_hyperparameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FastTokenizer.fit(smooth_chunks(4, seed=3), **kwargs)


def test_encode_rejects_bad_chunks(tok: FastTokenizer) -> None:
    with pytest.raises(ValueError, match="shape"):
        tok.encode(np.zeros((2, HORIZON, DIM)))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(np.full((HORIZON, DIM), np.nan))
