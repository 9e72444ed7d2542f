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

"""The training loop: dataset -> KIPolicy -> checkpoints, single process or under torchrun.

Exact resume rests on two choices: the data order is a pure function of (seed, step) (`StepSchedule`), and the
flow-matching noise/time of every micro-batch come from a generator seeded by (seed, step, rank, micro-step).
A checkpoint therefore only needs weights, optimizer, scheduler, EMA and the step; the RNG states are saved too
for anything else that draws random numbers.

Output folder:
  checkpoints/step_<N>/policy/  (KIPolicy.save_pretrained)   ema/ (EMA weights, when enabled)
                      training_state.pt (optimizer, scheduler, step, RNG, EMA count)
  final/                the deployable checkpoint (EMA weights when enabled), loadable by the policy node
  metrics.jsonl         one JSON line per logged step (step, loss, ce, flow, lr, grad_norm, samples_per_s; val_loss,
                        val_ce, val_flow at validation steps when val_episodes > 0)
  tb/                   TensorBoard scalars
  fast_tokenizer/       the FAST tokenizer fitted on the dataset (when it had none)
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from safetensors import SafetensorError
from tqdm import tqdm

from ki_vla.atomic import atomic_dir, recover_interrupted, write_text_atomic
from ki_vla.data.cotrain import MixtureDataset, VLMDataset
from ki_vla.data.lerobot import LeRobotDataset
from ki_vla.data.normalize import ACTION_KEY, Normalizer, compute_stats
from ki_vla.data.samples import ChunkDataset
from ki_vla.model.config import PolicyConfig
from ki_vla.model.policy import KIPolicy
from ki_vla.model.processing import delta_action_mask
from ki_vla.paths import resolve
from ki_vla.tokenizer.fast import FastTokenizer
from ki_vla.train.augment import ImageAugment
from ki_vla.train.config import TrainConfig
from ki_vla.train.distributed import DistEnv, wrap_model

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
FAST_DIR = "fast_tokenizer"
MAX_FAST_CHUNKS = 20000


class StepSchedule:
    """Which dataset indices each (step, rank, micro-step) reads: a pure function of the seed and the step.

    Epoch e's order comes from the dataset itself (cache-friendly block shuffle for robot data, the mixture's
    own placement for co-training); global position p = step * global_batch walks through the epochs.
    """

    def __init__(self, dataset: Any, seed: int, batch_size: int, accum: int, world_size: int,
                 start_frames: int = 0, start_repeat: int = 1) -> None:
        self.dataset, self.seed = dataset, seed
        self.batch_size, self.accum, self.world = batch_size, accum, world_size
        self.start_frames, self.start_repeat = start_frames, start_repeat
        self._epoch, self._order = -1, []

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accum * self.world

    def _order_for(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            if isinstance(self.dataset, MixtureDataset):
                self.dataset.set_epoch(epoch)
                self._order = list(range(len(self.dataset)))
            else:
                self._order = self.dataset.block_order(self.seed, epoch, start_frames=self.start_frames,
                                                       start_repeat=self.start_repeat)
            self._epoch = epoch
        return self._order

    def indices(self, step: int, rank: int, micro: int) -> list[int]:
        n = len(self._order_for(max(self._epoch, 0)))   # every epoch's order has the same length
        start = step * self.global_batch + (micro * self.world + rank) * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            out.append(self._order_for(p // n)[p % n])
        return out


class MicroBatches(torch.utils.data.Dataset):
    """Item k is the processed micro-batch of global micro-step k = step * accum + micro for one rank: the indices
    come from the StepSchedule (a pure function of seed and step), so worker processes build exactly the batches
    the training loop would build itself and resume stays exact. Decoding, resizing and tokenizing run here, in
    DataLoader workers when num_workers > 0, while the main process computes the previous step."""

    def __init__(self, schedule: StepSchedule, dataset: Any, processor: Any, rank: int) -> None:
        self.schedule, self.dataset, self.processor, self.rank = schedule, dataset, processor, rank

    def __len__(self) -> int:
        return 2 ** 62  # indexed by micro-step, unbounded: the sampler says which ones

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        step, micro = divmod(int(k), self.schedule.accum)
        return self.processor([self.dataset[i] for i in self.schedule.indices(step, self.rank, micro)])


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = sorted((output_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return next((c for c in reversed(ckpts) if (c / STATE_FILE).is_file() and (c / "policy").is_dir()), None)


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        if not cfg.dataset:
            raise ValueError("train config needs dataset=<LeRobot dataset folder>")
        self.cfg = cfg
        self.env = DistEnv.from_env()
        self.device = self.env.device(cfg.device)
        self.out = Path(cfg.output_dir)
        self.preempted_at: int | None = None  # the step a SIGTERM stopped `train` after (checkpointed)
        if self.env.is_main:  # a run killed mid-write left a half-built folder (or a swapped-out final/) behind
            for what in recover_interrupted(self.out / "checkpoints") + recover_interrupted(self.out):
                log.warning("%s: %s", self.out, what)
        self.env.barrier()
        self.resume_from = latest_checkpoint(self.out) if cfg.resume else None
        if cfg.resume and self.resume_from is None:
            log.warning("resume=true but %s has no complete checkpoint: starting from step 0", self.out)
        self._seed_everything(cfg.seed + self.env.rank)

        self.policy = self._build_policy()
        pcfg = self.policy.cfg
        ds = LeRobotDataset(cfg.dataset)
        self._check_dataset(ds, pcfg)
        if cfg.val_episodes >= ds.num_episodes:
            raise ValueError(f"val_episodes={cfg.val_episodes} leaves nothing to train on ({ds.num_episodes} episodes)")
        n_train = ds.num_episodes - cfg.val_episodes

        def chunks(episodes: range) -> ChunkDataset:
            return ChunkDataset(ds, horizon=pcfg.horizon, camera_names=list(pcfg.camera_names), episodes=episodes,
                                image_size=(pcfg.image_size, pcfg.image_size), resize_mode=pcfg.image_resize)

        robot = chunks(range(n_train))
        self.val_dataset = chunks(range(n_train, ds.num_episodes)) if cfg.val_episodes else None
        if self.resume_from is None:
            self._prepare_normalization(ds, robot)
        self.dataset: Any = robot
        if cfg.vlm_ratio > 0:
            self.dataset = MixtureDataset(robot, VLMDataset(cfg.vlm_dataset), cfg.vlm_ratio, seed=cfg.seed)
        if cfg.start_frames and isinstance(self.dataset, MixtureDataset):
            raise ValueError("start_frames / start_repeat apply to robot data alone, not with vlm_ratio > 0")
        self.schedule = StepSchedule(self.dataset, cfg.seed, cfg.batch_size, cfg.grad_accum_steps, self.env.world_size,
                                     cfg.start_frames, cfg.start_repeat)
        self.augment = ImageAugment(cfg.image_shift, cfg.image_rotate, cfg.color_jitter)

        self.policy.backbone.gradient_checkpointing = cfg.gradient_checkpointing
        if self.policy.expert is not None:
            self.policy.expert.gradient_checkpointing = cfg.gradient_checkpointing
        self.policy.to(self.device)
        self.ema = None
        if cfg.ema_decay is not None:
            if self.env.enabled and cfg.distributed == "fsdp":
                raise ValueError("EMA is not supported with FSDP sharding (set ema_decay=null)")
            self.ema = AveragedModel(self.policy, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False)
        self.model = wrap_model(self.policy, self.env, cfg.distributed, self.device)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: every parameter is frozen")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_with_warmup(s, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
        self.start_step = 0
        if self.resume_from is not None:
            self._load_state(self.resume_from)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # ---- set-up ----------------------------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _build_policy(self) -> KIPolicy:
        """The policy to train, in float32 when master_weights=float32: built (or loaded, checkpoints included,
        so resuming reads the float32 master weights back exactly) with dtype float32, while its config keeps the
        model's dtype, the one checkpoints are served in (`KIPolicy.from_pretrained` casts to it)."""
        cfg = self.cfg
        overrides: dict[str, Any] = {"variant": cfg.variant} if cfg.variant else {}
        path = self.resume_from / "policy" if self.resume_from is not None else resolve(cfg.model)
        pcfg = PolicyConfig.from_yaml(path / "config.yaml" if path.is_dir() else path)
        if cfg.variant:
            pcfg = PolicyConfig.from_dict({**pcfg.to_dict(), **overrides})
        serve_dtype = pcfg.dtype
        if cfg.master_weights == "float32":
            overrides["dtype"] = "float32"
        if path.is_dir():
            policy = KIPolicy.from_pretrained(path, **overrides)
        else:
            policy = KIPolicy(PolicyConfig.from_dict({**pcfg.to_dict(), **overrides}))
        policy.cfg = dataclasses.replace(policy.cfg, dtype=serve_dtype)
        return policy

    @staticmethod
    def _check_dataset(ds: LeRobotDataset, pcfg: PolicyConfig) -> None:
        missing = [c for c in pcfg.camera_names if c not in ds.camera_names]
        if missing:
            raise ValueError(f"dataset {ds.root} lacks camera(s) {missing} the model needs (it has {ds.camera_names})")
        if len(ds.state_names) != pcfg.state_dim or len(ds.action_names) != pcfg.action_dim:
            raise ValueError(f"dataset {ds.root} has state/action dims {len(ds.state_names)}/{len(ds.action_names)}, "
                             f"the model expects {pcfg.state_dim}/{pcfg.action_dim}")

    def _prepare_normalization(self, ds: LeRobotDataset, robot: ChunkDataset) -> None:
        """Stats from the dataset (computed when it has none); FAST tokenizer from the dataset or fitted once."""
        pcfg = self.policy.cfg
        normalizer = Normalizer.from_dataset(ds)
        chunks = None
        if pcfg.delta_actions:
            # The dataset's action stats describe absolute actions; a delta model is normalized by the deltas'.
            chunks = robot.all_action_chunks() - robot.chunk_states()[:, None, :] * delta_action_mask(pcfg)
            normalizer = normalizer.with_stats(ACTION_KEY, compute_stats(chunks.reshape(-1, chunks.shape[-1])))
        self.policy.set_normalizer(normalizer)
        if not pcfg.trains_backbone_ce or self.policy.fast_tokenizer is not None:
            return
        shipped = Path(ds.root) / "meta" / FAST_DIR
        if shipped.is_dir() and pcfg.delta_actions:
            log.info("not using %s: it was fitted on absolute actions, this model predicts deltas", shipped)
        if shipped.is_dir() and not pcfg.delta_actions:
            tok = FastTokenizer.load(shipped)
        else:
            local = self.out / FAST_DIR
            if self.cfg.fast_vocab_size > self.policy.cfg.fast_vocab_size:
                raise ValueError(f"train fast_vocab_size {self.cfg.fast_vocab_size} exceeds the "
                                 f"{self.policy.cfg.fast_vocab_size} FAST ids the model reserves (model config "
                                 "fast_vocab_size)")
            if self.env.is_main:
                chunks = normalizer.normalize(ACTION_KEY, robot.all_action_chunks() if chunks is None else chunks)
                if len(chunks) > MAX_FAST_CHUNKS:  # a seeded subset keeps fitting fast on large datasets
                    chunks = chunks[np.random.default_rng(self.cfg.seed).choice(len(chunks), MAX_FAST_CHUNKS,
                                                                                replace=False)]
                FastTokenizer.fit(chunks, vocab_size=self.cfg.fast_vocab_size).save(local)
            self.env.barrier()
            tok = FastTokenizer.load(local)
        self.policy.set_fast_tokenizer(tok)

    # ---- checkpoints -----------------------------------------------------------------------------------
    def _load_state(self, ckpt: Path) -> None:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_step = int(state["step"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.ema is not None and (ckpt / "ema").is_dir():
            ema_policy = KIPolicy.from_pretrained(ckpt / "ema",
                                                  dtype=str(next(self.policy.parameters()).dtype).split(".")[-1])
            self.ema.module.load_state_dict(ema_policy.state_dict())
            self.ema.n_averaged.fill_(int(state.get("ema_n_averaged", 0)))
        log.info("resumed from %s at step %d", ckpt, self.start_step)

    def save_checkpoint(self, step: int) -> Path:
        ckpt = self.out / "checkpoints" / f"step_{step:07d}"
        if self.env.enabled and self.cfg.distributed == "fsdp":
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd = get_model_state_dict(self.policy, options=opts)
            optim_sd = get_optimizer_state_dict(self.policy, self.optimizer, options=opts)
        else:
            model_sd, optim_sd = None, self.optimizer.state_dict()
        if self.env.is_main:
            def write(tmp: Path) -> None:
                self.policy.save_pretrained(tmp / "policy", state_dict=model_sd)
                if self.ema is not None:
                    self.policy.save_pretrained(tmp / "ema", state_dict=self.ema.module.state_dict())
                torch.save({"optimizer": optim_sd, "scheduler": self.scheduler.state_dict(), "step": step,
                            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                    "torch": torch.get_rng_state()},
                            "ema_n_averaged": int(self.ema.n_averaged) if self.ema is not None else 0,
                            "train_config": self.cfg.to_dict()}, tmp / STATE_FILE)

            previous = latest_checkpoint(self.out)
            try:
                atomic_dir(ckpt, write)
            except (OSError, SafetensorError, RuntimeError) as exc:  # a full disk, a quota: say what is safe
                # Write failures surface as OSError, safetensors' SafetensorError and torch.save's RuntimeError
                # ("unexpected pos"): all three measured by bench/reliability.py (tmpfs ENOSPC, RLIMIT_FSIZE EFBIG).
                kept = (f"the previous checkpoint {previous} is intact (the same command resumes from it)"
                        if previous is not None else "no earlier checkpoint exists")
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise OSError(getattr(exc, "errno", None) or errno.EIO,
                              f"could not write checkpoint {ckpt.name} ({reason}); {kept}") from exc
            for old in sorted((self.out / "checkpoints").glob("step_*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.env.barrier()
        return ckpt

    def _export_final(self, step: int) -> Path:
        final = self.out / "final"
        ckpt = self.out / "checkpoints" / f"step_{step:07d}"
        source = ckpt / ("ema" if self.ema is not None else "policy")
        if self.env.is_main:
            atomic_dir(final, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))
        self.env.barrier()
        return final

    # ---- loop --------------------------------------------------------------------------------------------
    def _batches(self, start: int, stop: int):
        """(step, micro, CPU batch) for steps start..stop-1, from `num_workers` worker processes (0: in this one)."""
        accum = self.cfg.grad_accum_steps
        source = MicroBatches(self.schedule, self.dataset, self.policy.processor, self.env.rank)
        if self.cfg.num_workers == 0:
            for k in range(start * accum, stop * accum):
                yield (*divmod(k, accum), source[k])
            return
        loader = torch.utils.data.DataLoader(
            source, batch_size=None, sampler=range(start * accum, stop * accum), num_workers=self.cfg.num_workers,
            prefetch_factor=4, persistent_workers=False, pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_threads)
        for k, batch in enumerate(loader, start=start * accum):
            yield (*divmod(k, accum), batch)

    def _micro_batch(self, step: int, micro: int,
                     batch: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The micro-batch on the device, augmented; `batch` is the processed CPU batch when a worker built it."""
        if batch is None:
            batch = MicroBatches(self.schedule, self.dataset, self.policy.processor, self.env.rank)[
                step * self.cfg.grad_accum_steps + micro]
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        # Flow time and noise per sample, keyed by its place in the step's global batch (StepSchedule.indices), so
        # accumulation and world size do not change any sample's draws; resume stays exact (a function of the step).
        first = (micro * self.env.world_size + self.env.rank) * self.cfg.batch_size
        base = (self.cfg.seed * 1_000_003 + step) * 1_000_033
        batch["sample_seed"] = torch.arange(base + first, base + first + batch["state"].shape[0], dtype=torch.int64)
        if self.cfg.state_dropout > 0:  # seeded by the step like the data order: resume stays exact
            rng = np.random.default_rng([self.cfg.seed, step, self.env.rank, micro, 7])
            drop = torch.from_numpy(rng.random(batch["state"].shape[0]) < self.cfg.state_dropout).to(self.device)
            batch["state"] = batch["state"].masked_fill(drop[:, None], 0.0)
        if self.augment.active:
            gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 1013 + self.env.rank * 37 + micro)
            batch["images"] = self.augment(batch["images"], gen)
        return batch

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean losses over the same `val_batches` held-out batches every time (fixed samples, fixed flow noise), on
        the EMA weights when kept (what final/ holds). Only the main process runs it (the others skip)."""
        val = self.val_dataset
        model = self.ema.module if self.ema is not None else self.policy
        order = np.random.default_rng(self.cfg.seed).permutation(len(val))
        bs = self.cfg.batch_size
        sums = {"loss": 0.0, "ce": 0.0, "flow": 0.0}
        n = 0
        was_training = model.training
        model.eval()
        try:
            for b in range(self.cfg.val_batches):
                idx = order[b * bs: (b + 1) * bs]
                if len(idx) == 0:
                    break
                batch = model.processor([val[int(i)] for i in idx], device=self.device)
                with self.autocast:
                    out = model.compute_loss(batch, torch.Generator(device=self.device).manual_seed(self.cfg.seed + b))
                for k in sums:
                    sums[k] += float(out[k])
                n += 1
        finally:
            model.train(was_training)
        return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}

    def _loss_norm(self, micro_batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """(2,) the step's valid target tokens and action steps over all its micro-batches and ranks (see
        KIPolicy.compute_loss): dividing sums by these makes 2 x 2 accumulation the loss of one batch of 4."""
        counts = torch.zeros(2, dtype=torch.float64)
        for b in micro_batches:
            counts[0] += float(b["target_valid"].sum()) if self.policy.cfg.trains_backbone_ce else 0.0
            counts[1] += float(b["action_valid"].sum())
        return torch.tensor(list(self.env.all_sum(counts.tolist())), dtype=torch.float32, device=self.device)

    def _metrics_file(self):
        path = self.out / "metrics.jsonl"
        if self.start_step > 0 and path.exists():
            # Drop lines logged after the checkpoint we resumed from, so the file is one consistent history.
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.start_step]
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        return open(path, "a" if self.start_step > 0 else "w")

    def train(self, until: int | None = None) -> list[dict[str, float]]:
        """Run to max_steps, or stop after step `until` (checkpointed, resumable: splits a job over time-limited
        allocations). Calling it again on the same Trainer continues from the step the last call stopped at (an
        evaluation between segments, as `ki-vla study` does, sees the weights of that step). Returns the logged
        metric rows of this run."""
        cfg, env = self.cfg, self.env
        stop = min(cfg.max_steps, until) if until is not None else cfg.max_steps
        history: list[dict[str, float]] = []
        writer = metrics = None
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            metrics = self._metrics_file()
            if cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.out / "tb"))
        bar = tqdm(total=cfg.max_steps, initial=self.start_step, desc="train",
                   disable=not (env.is_main and cfg.progress), dynamic_ncols=True)
        # Preemption (SLURM, Kubernetes: SIGTERM, then SIGKILL after a grace period): finish the step, checkpoint,
        # return. Only the main thread may install handlers; an embedding application's own handler is left alone.
        self.preempted_at = None
        preempt = {"asked": False}
        old_term = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
                signal.SIG_DFL, None):
            old_term = signal.signal(signal.SIGTERM, lambda *_: preempt.__setitem__("asked", True))
        self.model.train()
        step = self.start_step
        t_last, samples_since = time.perf_counter(), 0
        batches = self._batches(step, stop)
        try:
            while step < stop:
                sums = {"loss": 0.0, "ce": 0.0, "flow": 0.0}
                micro_batches = []
                for micro in range(cfg.grad_accum_steps):
                    b_step, b_micro, cpu_batch = next(batches)
                    if (b_step, b_micro) != (step, micro):
                        raise RuntimeError(f"data loader at step {b_step}.{b_micro}, training loop at {step}.{micro}")
                    micro_batches.append(self._micro_batch(step, micro, cpu_batch))
                norm = self._loss_norm(micro_batches)
                for micro, batch in enumerate(micro_batches):
                    sync = micro == cfg.grad_accum_steps - 1
                    ctx = (self.model.no_sync() if (env.enabled and not sync and hasattr(self.model, "no_sync"))
                           else contextlib.nullcontext())
                    with ctx:
                        with self.autocast:
                            out = self.model({**batch, "loss_norm": norm})
                        # Each micro-batch's loss is its share of the step's global mean; DDP averages gradients
                        # over the ranks, so scaling by world_size makes that average the global sum.
                        (out["loss"] * env.world_size).backward()
                    for k in sums:
                        sums[k] += float(out[k].detach()) * env.world_size
                    samples_since += cfg.batch_size * env.world_size
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in self.policy.parameters() if p.requires_grad],
                    cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                # Checked before the update: one NaN step would poison the weights, the EMA and the next checkpoint.
                if not (all(math.isfinite(v) for v in sums.values()) and math.isfinite(float(grad_norm))):
                    raise FloatingPointError(f"non-finite loss or gradient at step {step + 1} (grad norm "
                                             f"{float(grad_norm)}, {sums}); weights left as after step {step}")
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update_parameters(self.policy)
                    # Buffers are not averaged (use_buffers=False keeps the copies made at step 0): the running
                    # statistics the EMA weights are served with (keypoint normalization) are the live model's.
                    for mine, live in zip(self.ema.module.buffers(), self.policy.buffers(), strict=True):
                        mine.copy_(live)
                step += 1
                validate_now = self.val_dataset is not None and (step % cfg.val_every == 0 or step == stop)
                if step % cfg.log_every == 0 or step == cfg.max_steps or step == self.start_step + 1 or validate_now:
                    now = time.perf_counter()
                    row = {"step": step, **env.mean(sums), "lr": self.scheduler.get_last_lr()[0],
                           "grad_norm": float(grad_norm), "samples_per_s": samples_since / max(now - t_last, 1e-9)}
                    if validate_now and env.is_main:
                        row.update(self.validate())
                    t_last, samples_since = time.perf_counter(), 0
                    history.append(row)
                    if env.is_main:
                        metrics.write(json.dumps(row) + "\n")
                        metrics.flush()
                        if writer is not None:
                            for k, v in row.items():
                                if k != "step":
                                    writer.add_scalar(f"train/{k}", v, step)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", ce=f"{row['ce']:.3f}", flow=f"{row['flow']:.4f}")
                bar.update(1)
                # Every rank stops at the same step even if only some got the signal.
                stop_now = step < stop and env.all_sum([float(preempt["asked"])])[0] > 0
                if step % cfg.save_every == 0 or step == stop or stop_now:
                    self.save_checkpoint(step)
                if stop_now:
                    self.preempted_at = step
                    log.warning("SIGTERM: stopped after step %d with a checkpoint; the same command resumes", step)
                    break
            if step == cfg.max_steps:
                self._export_final(step)
        finally:
            self.start_step = step  # the next call continues here (its metrics appended, not rewritten)
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            batches.close()  # stops DataLoader workers when the loop ends early (until=, an exception)
            bar.close()
            if metrics is not None:
                metrics.close()
            if writer is not None:
                writer.close()
        return history


def _worker_threads(_: int) -> None:
    # One intra-op thread per data worker: the workers run beside the training step, which owns the cores.
    torch.set_num_threads(1)
    # A preemption signal sent to the whole job must not kill the workers mid-step: the main process checkpoints
    # first, then shuts them down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
