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

"""Training configuration: a dataclass loaded from YAML, overridable with `key=value` on the command line."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from ki_vla.configs import build, load_yaml
from ki_vla.paths import resolve

from ki_vla.model.config import VARIANTS


@dataclass
class TrainConfig:
    model: str = "config/model/tiny.yaml"  # model YAML (new model) or a checkpoint folder (fine-tune)
    variant: str | None = None  # override the model config's variant
    dataset: str = ""  # LeRobot dataset folder (v3.0 or v2.1)
    vlm_dataset: str | None = None  # co-training folder (samples.jsonl + images), see ki_vla.data.cotrain
    vlm_ratio: float = 0.0
    output_dir: str = "outputs/train"
    max_steps: int = 1000
    batch_size: int = 8  # per process, per micro-step
    grad_accum_steps: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 1.0
    ema_decay: float | None = 0.999  # None disables EMA
    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    # Trainable weights, their gradients, AdamW state and the EMA are kept in float32 whatever the model config's
    # dtype (which is then the dtype checkpoints are served in), with bf16 autocast for the compute: in pure bf16 an
    # Adam-sized update of a 0.02-std weight at lr 5e-6 rounds away for most weights, and a 0.999 EMA barely moves.
    # "model" trains in the model config's dtype instead (half the memory, the precision loss above).
    master_weights: str = "float32"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    distributed: str = "ddp"  # under torchrun: ddp | fsdp
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    resume: bool = False  # continue from the newest checkpoint in output_dir
    # DataLoader worker processes that decode, resize and tokenize the next micro-batches while this process
    # trains (0: in the training loop). Each worker holds its own decoded-episode cache (memory x workers).
    num_workers: int = 0
    # Held-out validation: the last `val_episodes` episodes of the dataset are not trained on; every `val_every`
    # steps the loss on `val_batches` fixed batches of them (EMA weights when kept: what final/ holds) is logged
    # as val_loss / val_flow / val_ce, to pick checkpoints by.
    # Expert state dropout: this fraction of training samples has the expert's continuous state input zeroed
    # (`expert.state_input` models). With the state at hand, a chunk is easy to predict from where the arm already
    # is, and the image pathway learns from the few frames before the arm moves only (measured on the CPU recipe:
    # the first chunk of a training episode was off by up to 0.5 rad, chunks 30 ticks later by 0.1).
    state_dropout: float = 0.0
    # Episode starts oversampled: the first `start_frames` frames of every episode are drawn `start_repeat` times
    # per epoch. Why: before the arm moves, the state is the same in every episode, so only those frames teach the
    # expert to read the scene (1 in 8 of a 400-frame episode for the first 50); measured on transfer_color, the
    # first chunk moved 0.01-0.05 of the plan's spread across scenes after 2000-6000 steps without it.
    start_frames: int = 0
    start_repeat: int = 1
    # Image augmentation of the training batches (ki_vla.train.augment; never at inference or validation): every
    # camera image of every sample is shifted by up to image_shift pixels (at the model's resolution), rotated by
    # up to image_rotate degrees, and its brightness / contrast / saturation scaled by factors in
    # [1 - color_jitter, 1 + color_jitter]. All 0 (off) by default.
    image_shift: int = 0
    image_rotate: float = 0.0
    color_jitter: float = 0.0
    val_episodes: int = 0
    val_every: int = 500
    val_batches: int = 4
    fast_vocab_size: int = 1024  # when the dataset has no FAST tokenizer yet
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid train config: {msg}")

        need(self.variant is None or self.variant in VARIANTS, f"variant {self.variant!r} not in {VARIANTS}")
        need(self.max_steps > 0, "max_steps must be > 0")
        need(self.batch_size > 0 and self.grad_accum_steps > 0, "batch_size and grad_accum_steps must be > 0")
        need(self.lr > 0 and 0 <= self.min_lr_ratio <= 1, "lr must be > 0 and min_lr_ratio in [0, 1]")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)")
        need(self.warmup_steps >= 0 and self.grad_clip >= 0, "warmup_steps and grad_clip must be >= 0")
        need(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must be in (0, 1) or null")
        need(self.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16")
        need(self.master_weights in ("float32", "model"), "master_weights must be float32 or model")
        need(self.distributed in ("ddp", "fsdp"), "distributed must be ddp or fsdp")
        need(0 <= self.vlm_ratio < 1, "vlm_ratio must be in [0, 1)")
        need(self.vlm_ratio == 0 or bool(self.vlm_dataset), "vlm_ratio > 0 needs vlm_dataset")
        need(0 <= self.state_dropout < 1, "state_dropout must be in [0, 1)")
        need(self.image_shift >= 0 and self.image_rotate >= 0 and 0 <= self.color_jitter < 1,
             "image_shift (pixels) and image_rotate (degrees) must be >= 0, color_jitter in [0, 1)")
        need(self.num_workers >= 0, "num_workers must be >= 0")
        need(self.start_frames >= 0 and self.start_repeat >= 1, "start_frames must be >= 0 and start_repeat >= 1")
        need(self.val_episodes >= 0 and self.val_every > 0 and self.val_batches > 0,
             "val_episodes must be >= 0, val_every and val_batches > 0")
        need(self.save_every > 0 and self.log_every > 0 and self.keep_checkpoints > 0,
             "save_every, log_every and keep_checkpoints must be > 0")

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> "TrainConfig":
        """YAML file (optional) + `key=value` overrides; values are parsed as YAML (`1e-3`, `true`, `[0.9, 0.95]`)
        and coerced to each field's type (ki_vla.configs: an unknown key or a value that cannot be one is a
        ValueError naming the field)."""
        data: dict[str, Any] = {}
        if path is not None:
            path = resolve(path)
            if not path.is_file():
                raise FileNotFoundError(f"train config not found: {path}")
            loaded = load_yaml(path) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping at the top level")
            data.update(loaded)
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"override {item!r} is not key=value")
            data[key.strip()] = load_yaml(value, f"override {item!r}")
        return build(cls, data, "train config")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out
