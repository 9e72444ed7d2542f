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

"""One variant of the study, in its own process (`python -m ki_vla.study.run SPEC.json`).

A process per variant so every variant starts from the same freshly loaded pretrained weights and its peak memory is
its own (the parent reads it from `os.wait4`). The variant trains with the project's `Trainer` in segments; after
each segment the live weights are evaluated on the held-out episodes (action error), and at the end the backbone's
knowledge retention and the language-following gap are measured. The result is `<output_dir>/study_result.json`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ki_vla.atomic import write_text_atomic
from ki_vla.configs import build
from ki_vla.study import actions, knowledge, texts
from ki_vla.train.config import TrainConfig
from ki_vla.train.trainer import Trainer

RESULT_FILE = "study_result.json"


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """spec: {"name", "train": TrainConfig fields, "segments": [step, ...], "per_episode": int, "seed": int}."""
    cfg = build(TrainConfig, spec["train"], f"study variant {spec['name']}")
    if not cfg.val_episodes:
        raise ValueError("the study needs held-out episodes (val_episodes > 0)")
    trainer = Trainer(cfg)
    policy = trainer.policy
    tok = policy.processor.text_tokenizer
    seed = int(spec["seed"])
    ref = knowledge.reference(policy.backbone, tok, texts.ENGLISH, texts.CLOZE)  # the pretrained model itself
    samples = actions.held_out_samples(trainer.val_dataset, int(spec["per_episode"]))
    curve = []
    train_seconds = 0.0
    for stop in spec["segments"]:
        t0 = time.perf_counter()
        rows = trainer.train(until=int(stop))
        train_seconds += time.perf_counter() - t0
        if trainer.preempted_at is not None:  # SIGTERM: the trainer checkpointed; no result for a partial run
            raise SystemExit(f"[study] {spec['name']}: stopped by SIGTERM after step {trainer.preempted_at}")
        err = actions.action_errors(policy, samples, seed=seed)
        val = next((r for r in reversed(rows) if "val_flow" in r), {})
        curve.append({"step": int(stop), "action_mse": float(err.mean()), "val_flow": val.get("val_flow"),
                      "val_ce": val.get("val_ce"), "train_loss": rows[-1]["loss"] if rows else None})
        print(f"[study] {spec['name']} step {stop}: action mse {err.mean():.4f}", flush=True)
    true_err = actions.action_errors(policy, samples, seed=seed)
    swapped = actions.action_errors(policy, samples, seed=seed, swap=True)
    first = np.array([s["frame_index"] == 0 for s in samples])
    metrics = [json.loads(line) for line in (trainer.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in metrics if r["step"] > 1 and "samples_per_s" in r]
    return {
        "name": spec["name"], "variant": policy.cfg.variant, "vlm_ratio": cfg.vlm_ratio, "steps": cfg.max_steps,
        "batch_size": cfg.batch_size, "lr": cfg.lr,
        "cloze_kept": len(ref.cloze_kept), "cloze_total": ref.cloze_total,
        "retention": knowledge.retention(policy.backbone, tok, ref, texts.ENGLISH, texts.CLOZE),
        "curve": curve, "hold_still_mse": actions.hold_still_error(samples),
        "language": {"true_mse": float(true_err.mean()), "swapped_mse": float(swapped.mean()),
                     "true_mse_first_frame": float(true_err[first].mean()),
                     "swapped_mse_first_frame": float(swapped[first].mean()), "samples": len(samples)},
        "step_seconds": cfg.batch_size / float(np.median(rates)) if rates else None,
        "train_seconds": train_seconds,
        "trainable_params": sum(p.numel() for p in policy.parameters() if p.requires_grad),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ki_vla.study.run SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    torch.manual_seed(int(spec["seed"]))
    result = run_variant(spec)
    write_text_atomic(Path(spec["train"]["output_dir"]) / RESULT_FILE, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
