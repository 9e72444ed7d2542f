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

"""`ki-vla fit-tokenizer --dataset DIR`: fit FAST on a dataset's normalized action chunks.

The tokenizer lands in DIR/meta/fast_tokenizer (or --out), where `ki-vla train` picks it up. A held-out 10% of
the chunks measures what the tokenizer costs: round-trip RMS error (normalized units) and tokens per chunk.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

help = "fit the FAST action tokenizer on a LeRobot dataset (report round-trip error and tokens per chunk)"

DEFAULT_SUBDIR = Path("meta") / "fast_tokenizer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="LeRobot dataset folder (v3.0 or v2.1)")
    parser.add_argument("--out", default=None, help=f"output folder (default: DATASET/{DEFAULT_SUBDIR})")
    parser.add_argument("--horizon", type=int, default=50, help="chunk length in control steps (default 50)")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--scale", type=float, default=10.0, help="DCT coefficient scale before rounding")
    parser.add_argument("--max-chunks", type=int, default=20000, help="fit on at most this many chunks (seeded subset)")
    parser.add_argument("--seed", type=int, default=0)


def normalized_chunks(dataset_root: str | Path, horizon: int):
    """All action chunks of a dataset, normalized with its stats (the training-time normalization)."""
    from ki_vla.data.lerobot import LeRobotDataset
    from ki_vla.data.normalize import Normalizer
    from ki_vla.data.samples import ChunkDataset

    ds = LeRobotDataset(dataset_root)
    normalizer = Normalizer.from_dataset(ds)
    chunks = ChunkDataset(ds, horizon=horizon, camera_names=[]).all_action_chunks()
    return normalizer.normalize("action", chunks).astype(np.float32)


def run(args: argparse.Namespace) -> int:
    from ki_vla.tokenizer.fast import FastTokenizer

    chunks = normalized_chunks(args.dataset, args.horizon)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(chunks))
    n_test = max(1, len(chunks) // 10) if len(chunks) > 10 else 0
    test, train = chunks[order[:n_test]], chunks[order[n_test:]][: args.max_chunks]
    tok = FastTokenizer.fit(train, vocab_size=args.vocab_size, scale=args.scale)
    out = Path(args.out) if args.out else Path(args.dataset) / DEFAULT_SUBDIR
    tok.save(out)
    report = (f"fitted FAST (vocab {tok.vocab_size}, scale {args.scale}) on {len(train)} chunks of {args.horizon} x "
              f"{chunks.shape[2]} -> {out}")
    if n_test:
        ids = tok.encode_batch(test)
        rms = float(np.sqrt(np.mean([(tok.decode(i, args.horizon, chunks.shape[2]) - c) ** 2
                                     for i, c in zip(ids, test)])))
        report += (f"\nheld-out {n_test} chunks: {np.mean([len(i) for i in ids]):.1f} tokens/chunk, round-trip RMS "
                   f"{rms:.4f} (normalized units)")
    print(report)
    return 0
