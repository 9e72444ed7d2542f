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

"""FAST action tokenizer (Pertsch et al. 2025): DCT along time, quantization, then BPE.

Why this shape: a normalized action chunk (H x D) of a smooth trajectory has almost all of its energy in
a few low DCT frequencies, so after scaling and rounding most coefficients are 0 and the nonzero ones
sit at the front when the coefficients are flattened frequency-major (index = freq * D + dim). BPE
trained on those strings then merges the long runs of zeros and common low-frequency patterns into
single tokens: a 50 x 14 chunk (700 numbers) becomes a few dozen tokens that a language model can emit.

Pipeline per chunk (METHOD.md, "FAST tokenizer"):

    chunk (H, D) --scipy.fft.dct(type 2, norm="ortho", axis=0)--> coefficients (H, D)
      * scale, round to int, flatten frequency-major, subtract the fitted minimum (>= 0)
      --> one Unicode character per integer (chr(_CHAR_OFFSET + value))
      --> BPE ids (HF `tokenizers`: models.BPE trained by trainers.BpeTrainer).

Decoding inverts each step. It never raises: a malformed id sequence returns a fallback array and
`ok=False` (see `FastTokenizer.decode_with_status`), with a warning on the "ki_vla.tokenizer" logger,
because at inference an autoregressive model can emit any token sequence and the robot loop must not
crash on it.

Why models.BPE over a character alphabet instead of the ByteLevel pre-tokenizer: each quantized
coefficient is exactly one base symbol of the BPE alphabet (the full fitted integer range is given as
the trainer's initial alphabet), so no vocabulary is spent re-merging the two UTF-8 bytes that values
>= 128 would become under byte-level encoding, no whitespace/regex splitting breaks runs, and no id
sequence can decode to half a character. Compression measured on smooth synthetic chunks was the same
as byte-level BPE (about 71 vs 72 tokens per 50 x 14 chunk at vocab 1024).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from scipy.fft import dct, idct
from tokenizers import Tokenizer, decoders, models, trainers

from ki_vla.atomic import write_text_atomic

__all__ = ["FastTokenizer"]

logger = logging.getLogger("ki_vla.tokenizer")

# First code point of the character alphabet. The CJK Unified Ideographs block (U+4E00..U+9FFF) is the
# largest contiguous run of printable, non-combining, non-whitespace letters in the BMP, so every
# quantized value maps to a visible character (readable tokenizer.json, no normalization surprises).
_CHAR_OFFSET = 0x4E00
_MAX_SYMBOLS = 0x9FFF - 0x4E00 + 1
# Decoding refuses to allocate absurd outputs (a garbage horizon must not become a MemoryError).
_MAX_DECODE_ELEMENTS = 1 << 24

_BPE_FILE = "fast_bpe.json"
_CONFIG_FILE = "fast_config.json"
_FORMAT_VERSION = 1


def _ints_to_string(values: np.ndarray) -> str:
    """Map non-negative ints (1-D) to one character each: chr(_CHAR_OFFSET + v), vectorized via UTF-32."""
    return (values.astype(np.int64) + _CHAR_OFFSET).astype("<u4").tobytes().decode("utf-32-le")


def _string_to_ints(text: str) -> np.ndarray:
    """Inverse of `_ints_to_string`; characters outside the alphabet come back out of range (caller checks)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64) - _CHAR_OFFSET


class FastTokenizer:
    """DCT + BPE tokenizer for normalized action chunks (H x D), fitted on a dataset.

    Attributes:
        scale: multiplier applied to DCT coefficients before rounding. The quantization step in
            coefficient space is 1/scale; the orthonormal DCT keeps errors the same size in action space,
            so the round-trip RMS error is at most about (1/scale)/sqrt(12) (0.029 at scale 10).
        min_value, max_value: the smallest and largest quantized coefficient seen while fitting. They
            fix the alphabet (max_value - min_value + 1 symbols); encode clips to this range.
        horizon, dim: the chunk shape the tokenizer was fitted on (informational; decode takes the
            shape explicitly so that it never depends on hidden state).
    """

    def __init__(
        self,
        bpe: Tokenizer,
        *,
        scale: float,
        min_value: int,
        max_value: int,
        horizon: int,
        dim: int,
    ) -> None:
        """Wrap an already trained BPE tokenizer; use `fit` or `load` rather than calling this directly."""
        if not (isinstance(scale, Real) and np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        if max_value < min_value:
            raise ValueError(f"max_value {max_value} < min_value {min_value}")
        self._bpe = bpe
        self.scale = float(scale)
        self.min_value = int(min_value)
        self.max_value = int(max_value)
        self.horizon = int(horizon)
        self.dim = int(dim)
        # Fuse joins the decoded tokens with nothing in between, so decode(ids) is the exact chunk string.
        self._bpe.decoder = decoders.Fuse()

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        chunks: Any,
        vocab_size: int = 1024,
        scale: float = 10.0,
        min_frequency: int = 2,
    ) -> "FastTokenizer":
        """Fit the quantization range and train the BPE vocabulary on normalized chunks.

        Args:
            chunks: array-like (N, H, D), finite, normalized to about [-1, 1] (quantile normalization).
            vocab_size: the BPE vocabulary size, alphabet included. It must hold at least the
                quantized coefficient range (max - min + 1 symbols); training may stop below it when no
                pair occurs `min_frequency` times, so read `tok.vocab_size` for the real size.
            scale: DCT coefficient multiplier before rounding (precision vs. alphabet size).
            min_frequency: a pair must occur at least this often to be merged.

        Raises:
            ValueError: on a wrong shape, an empty dataset, non-finite values, bad hyperparameters, or a
                coefficient range that does not fit `vocab_size` (usually un-normalized actions).
        """
        data = np.asarray(chunks, dtype=np.float64)
        if data.ndim != 3:
            raise ValueError(f"chunks must have shape (N, horizon, dim), got ndim={data.ndim} shape={data.shape}")
        if min(data.shape) < 1:
            raise ValueError(f"chunks must be non-empty in every axis, got shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError("chunks contain NaN or infinite values; clean or normalize the data first")
        if not isinstance(vocab_size, Integral) or isinstance(vocab_size, bool) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        if not isinstance(min_frequency, Integral) or isinstance(min_frequency, bool) or min_frequency < 1:
            raise ValueError(f"min_frequency must be a positive int, got {min_frequency!r}")
        if not (isinstance(scale, Real) and np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")

        _, horizon, dim = data.shape
        quantized = np.rint(dct(data, type=2, axis=1, norm="ortho") * scale).astype(np.int64)
        flat = quantized.reshape(len(data), horizon * dim)  # C order over (freq, dim): freq-major
        min_value, max_value = int(flat.min()), int(flat.max())
        n_symbols = max_value - min_value + 1
        if n_symbols > vocab_size:
            raise ValueError(
                f"vocab_size {vocab_size} is smaller than the quantized coefficient range "
                f"[{min_value}, {max_value}] ({n_symbols} symbols); normalize the actions to about "
                f"[-1, 1], lower scale ({scale}) or raise vocab_size"
            )
        if n_symbols > _MAX_SYMBOLS:
            raise ValueError(
                f"quantized coefficient range has {n_symbols} symbols, more than the {_MAX_SYMBOLS} the "
                "character alphabet holds; normalize the actions or lower scale"
            )

        shifted = flat - min_value
        strings = [_ints_to_string(row) for row in shifted]
        bpe = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            min_frequency=int(min_frequency),
            show_progress=False,
            special_tokens=[],
            # Every value of the fitted range is a base symbol, seen in training or not, so any clipped
            # chunk is encodable and no unknown-token path exists.
            initial_alphabet=[chr(_CHAR_OFFSET + v) for v in range(n_symbols)],
        )
        bpe.train_from_iterator(strings, trainer=trainer, length=len(strings))
        return cls(bpe, scale=scale, min_value=min_value, max_value=max_value, horizon=horizon, dim=dim)

    @property
    def vocab_size(self) -> int:
        """Number of BPE ids; every id `encode` returns is in [0, vocab_size)."""
        return int(self._bpe.get_vocab_size())

    # ------------------------------------------------------------------ encoding
    def _chunks_to_strings(self, chunks: np.ndarray) -> list[str]:
        """DCT, quantize, clip to the fitted range, shift and map to characters, for (N, H, D) chunks."""
        quantized = np.rint(dct(chunks, type=2, axis=1, norm="ortho") * self.scale).astype(np.int64)
        flat = quantized.reshape(len(chunks), -1)
        clipped = np.clip(flat, self.min_value, self.max_value)
        n_clipped = int(np.count_nonzero(clipped != flat))
        if n_clipped:
            # Debug level: out-of-range coefficients are expected occasionally on held-out data, and an
            # encode inside a training loop must not flood the log.
            logger.debug("FAST encode clipped %d coefficient(s) to the fitted range [%d, %d]",
                         n_clipped, self.min_value, self.max_value)
        return [_ints_to_string(row) for row in clipped - self.min_value]

    @staticmethod
    def _as_chunks(chunks: Any, ndim: int) -> np.ndarray:
        """Validate encode input: the right ndim, non-empty axes, finite values."""
        data = np.asarray(chunks, dtype=np.float64)
        if data.ndim != ndim:
            expected = "(horizon, dim)" if ndim == 2 else "(N, horizon, dim)"
            raise ValueError(f"expected an array of shape {expected}, got shape {data.shape}")
        if min(data.shape[-2:]) < 1:
            raise ValueError(f"chunk axes must be non-empty, got shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError("chunk contains NaN or infinite values")
        return data

    def encode(self, chunk: Any) -> list[int]:
        """Tokenize one normalized chunk (H, D) into BPE ids.

        Quantized DCT coefficients outside the range seen by `fit` are clipped to it (the alphabet has
        no symbol for them), so an out-of-distribution chunk decodes to a bounded approximation.
        Raises ValueError on a wrong shape or non-finite values.
        """
        data = self._as_chunks(chunk, ndim=2)
        return list(self._bpe.encode(self._chunks_to_strings(data[None])[0]).ids)

    def encode_batch(self, chunks: Any) -> list[list[int]]:
        """Tokenize (N, H, D) chunks; same clipping as `encode`, one BPE call for the whole batch."""
        data = self._as_chunks(chunks, ndim=3)
        if len(data) == 0:
            return []
        return [list(enc.ids) for enc in self._bpe.encode_batch(self._chunks_to_strings(data))]

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Any, horizon: int, dim: int) -> np.ndarray:
        """Decode ids to a float32 (horizon, dim) chunk; never raises (see `decode_with_status`)."""
        chunk, _ = self.decode_with_status(ids, horizon, dim)
        return chunk

    def decode_with_status(self, ids: Any, horizon: int, dim: int) -> tuple[np.ndarray, bool]:
        """Decode ids to a float32 (horizon, dim) chunk and say whether the ids were well formed.

        Never raises. Returns `(chunk, True)` for a well-formed sequence. Otherwise `ok` is False and a
        warning is logged on "ki_vla.tokenizer":
          * ids that decode to characters but the wrong count of coefficients: the coefficients are
            zero-padded (missing high frequencies) or truncated to horizon * dim and decoded, because
            that is still the best estimate of the intended chunk;
          * anything undecodable (not a sequence of ints, ids out of [0, vocab_size), an empty list,
            characters outside the alphabet): zeros (horizon, dim), i.e. the normalized-space mean;
          * a horizon/dim that is not a positive int, or horizon * dim above 2**24 elements: a
            zero-size float32 array, (horizon, dim) when both are ints >= 0 (one of them 0), else (0, 0).
        """
        shape = self._decode_shape(horizon, dim)
        if shape is None:
            return self._empty_for(horizon, dim), False
        try:
            return self._decode_checked(ids, *shape)
        except Exception as exc:  # the never-raise contract at the API boundary; logged, not hidden
            logger.warning("FAST decode failed unexpectedly (%s: %s); returning zeros", type(exc).__name__, exc)
            return np.zeros(shape, dtype=np.float32), False

    @staticmethod
    def _decode_shape(horizon: Any, dim: Any) -> tuple[int, int] | None:
        """Return (horizon, dim) when both are positive ints within the allocation cap, else None (logged)."""
        valid = all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in (horizon, dim))
        if not valid or int(horizon) * int(dim) > _MAX_DECODE_ELEMENTS:
            logger.warning("FAST decode got an invalid chunk shape (horizon=%r, dim=%r)", horizon, dim)
            return None
        return int(horizon), int(dim)

    @staticmethod
    def _empty_for(horizon: Any, dim: Any) -> np.ndarray:
        """A zero-size float32 array for an invalid shape request: (horizon, dim) if that is zero-size."""
        ints = all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 0 for v in (horizon, dim))
        if ints and int(horizon) * int(dim) == 0:
            return np.zeros((int(horizon), int(dim)), dtype=np.float32)
        return np.zeros((0, 0), dtype=np.float32)

    def _coerce_ids(self, ids: Any) -> list[int] | None:
        """Return the ids as a list of Python ints in [0, vocab_size), or None when malformed (logged)."""
        if isinstance(ids, (str, bytes, bytearray)) or ids is None:
            logger.warning("FAST decode got %s instead of a sequence of ids", type(ids).__name__)
            return None
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()
        if not isinstance(ids, Iterable):
            logger.warning("FAST decode got a non-iterable %s", type(ids).__name__)
            return None
        items: Sequence[Any] = list(ids)
        if not items:
            logger.warning("FAST decode got an empty id sequence")
            return None
        vocab = self.vocab_size
        for item in items:
            if not isinstance(item, Integral) or isinstance(item, bool):
                logger.warning("FAST decode got a non-integer id %r", item)
                return None
            if not 0 <= item < vocab:
                logger.warning("FAST decode got id %d outside [0, %d)", item, vocab)
                return None
        return [int(item) for item in items]

    def _decode_checked(self, ids: Any, horizon: int, dim: int) -> tuple[np.ndarray, bool]:
        """Decode after validation; pads/truncates a wrong coefficient count and reports it."""
        fallback = np.zeros((horizon, dim), dtype=np.float32)
        clean = self._coerce_ids(ids)
        if clean is None:
            return fallback, False
        values = _string_to_ints(self._bpe.decode(clean, skip_special_tokens=False))
        n_symbols = self.max_value - self.min_value + 1
        if values.size == 0 or np.any((values < 0) | (values >= n_symbols)):
            logger.warning("FAST decode produced characters outside the fitted alphabet; returning zeros")
            return fallback, False
        ok = True
        coefficients = (values + self.min_value).astype(np.float64) / self.scale
        expected = horizon * dim
        if coefficients.size != expected:
            logger.warning("FAST decode produced %d coefficients, expected %d (= %d x %d); %s",
                           coefficients.size, expected, horizon, dim,
                           "zero-padding" if coefficients.size < expected else "truncating")
            coefficients = np.pad(coefficients[:expected], (0, max(0, expected - coefficients.size)))
            ok = False
        chunk = idct(coefficients.reshape(horizon, dim), type=2, axis=0, norm="ortho")
        return chunk.astype(np.float32), ok

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the tokenizer to a folder: the BPE model and a config that pins it by hash.

        Files: `fast_bpe.json` (HF `tokenizers` format) and `fast_config.json` (scale, range, shape, the
        sha256 of fast_bpe.json). Each is written atomically (temporary file + os.replace); the hash
        lets `load` reject a pair left mismatched by a crash between the two writes. The `fast_` prefix
        keeps these clear of a text tokenizer's `tokenizer.json` when both share a checkpoint folder.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        bpe_text = self._bpe.to_str()
        config = {
            "format_version": _FORMAT_VERSION,
            "type": "fast_dct_bpe",
            "scale": self.scale,
            "min_value": self.min_value,
            "max_value": self.max_value,
            "horizon": self.horizon,
            "dim": self.dim,
            "char_offset": _CHAR_OFFSET,
            "vocab_size": self.vocab_size,
            "bpe_sha256": hashlib.sha256(bpe_text.encode("utf-8")).hexdigest(),
        }
        write_text_atomic(folder / _BPE_FILE, bpe_text)
        write_text_atomic(folder / _CONFIG_FILE, json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "FastTokenizer":
        """Load a tokenizer written by `save`.

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: the config is unreadable, of another format, or does not match fast_bpe.json.
        """
        folder = Path(directory)
        config_path, bpe_path = folder / _CONFIG_FILE, folder / _BPE_FILE
        for path in (config_path, bpe_path):
            if not path.is_file():
                raise FileNotFoundError(f"FAST tokenizer file missing: {path}")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_path} is not valid JSON: {exc}") from exc
        if not isinstance(config, dict) or config.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{config_path}: unsupported FAST tokenizer format {config!r:.200}")
        if config.get("char_offset") != _CHAR_OFFSET:
            raise ValueError(f"{config_path}: char_offset {config.get('char_offset')!r} != {_CHAR_OFFSET}")
        bpe_text = bpe_path.read_text(encoding="utf-8")
        if hashlib.sha256(bpe_text.encode("utf-8")).hexdigest() != config.get("bpe_sha256"):
            raise ValueError(f"{bpe_path} does not match the hash in {config_path} (partial or mixed save?)")
        try:
            return cls(
                Tokenizer.from_str(bpe_text),
                scale=float(config["scale"]),
                min_value=int(config["min_value"]),
                max_value=int(config["max_value"]),
                horizon=int(config["horizon"]),
                dim=int(config["dim"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{config_path}: missing or invalid field ({exc})") from exc

    def __repr__(self) -> str:
        return (f"FastTokenizer(vocab_size={self.vocab_size}, scale={self.scale}, "
                f"range=[{self.min_value}, {self.max_value}], fitted_shape=({self.horizon}, {self.dim}))")
