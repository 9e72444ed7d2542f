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

"""Bags -> dataset -> training -> checkpoint, exact resume, and the torchrun paths (gloo on CPU)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ki_vla import KIPolicy
from ki_vla.data.bag import convert_bags
from ki_vla.testing import write_synthetic_bag
from ki_vla.train.config import TrainConfig
from ki_vla.train.trainer import Trainer, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two recorded episodes (mcap and sqlite3) converted to LeRobot v3 at the tiny model's image size."""
    d = tmp_path_factory.mktemp("bags")
    bags = [write_synthetic_bag(d / "ep0", storage="mcap", duration_s=1.2),
            write_synthetic_bag(d / "ep1", storage="sqlite3", duration_s=1.0, instruction="transfer the blue cube")]
    from ki_vla.data.bag import BagConversionConfig

    return convert_bags(bags, d / "dataset", BagConversionConfig(image_size=(32, 32)), progress=False)


def config(dataset: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model=str(ROOT / "config/model/tiny.yaml"), dataset=str(dataset), output_dir=str(out), max_steps=20,
                batch_size=4, lr=1e-2, warmup_steps=2, min_lr_ratio=0.5, save_every=10, log_every=1, ema_decay=0.9,
                progress=False, tensorboard=False, fast_vocab_size=256)
    base.update(kw)
    return TrainConfig(**base)


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_bag_to_checkpoint(dataset, tmp_path):
    out = tmp_path / "run"
    history = Trainer(config(dataset, out, tensorboard=True)).train()
    first, last = history[0], history[-1]
    assert last["loss"] < 0.8 * first["loss"] and last["flow"] < 0.6 * first["flow"], (first, last)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert {"step", "loss", "ce", "flow", "lr", "grad_norm", "samples_per_s"} <= set(rows[0])
    assert any((out / "tb").iterdir())
    policy = KIPolicy.from_pretrained(out / "final")
    assert policy.fast_tokenizer is not None and policy.processor.has_data_stats
    batch = policy.example_batch(1)
    assert torch.isfinite(policy.sample_actions(batch)).all()
    assert latest_checkpoint(out).name == "step_0000020"


def test_resume_reproduces_uninterrupted_run(dataset, tmp_path):
    full = tmp_path / "full"
    Trainer(config(dataset, full, save_every=5, max_steps=12)).train()
    split = tmp_path / "split"
    Trainer(config(dataset, split, save_every=5, max_steps=12)).train(until=7)  # checkpoints at 5 and 7
    assert latest_checkpoint(split).name == "step_0000007"
    assert not (split / "final").exists()
    Trainer(config(dataset, split, save_every=5, max_steps=12, resume=True)).train()
    assert losses(split) == losses(full)
    a = KIPolicy.from_pretrained(full / "final").state_dict()
    b = KIPolicy.from_pretrained(split / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same Trainer called again continues where it stopped (segments with evaluations between them)
    segmented = tmp_path / "segmented"
    trainer = Trainer(config(dataset, segmented, save_every=5, max_steps=12))
    trainer.train(until=4)
    rows = trainer.train(until=9) + trainer.train()
    assert [r["step"] for r in rows][-1] == 12 and min(r["step"] for r in rows) > 4
    assert losses(segmented) == losses(full)
    c = KIPolicy.from_pretrained(segmented / "final").state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("variant", ["pi0", "joint", "frozen", "pi0_fast"])
def test_every_variant_trains_from_the_same_config(dataset, tmp_path, variant):
    """Each variant trains what METHOD.md says: pi0 no CE, pi0_fast no flow, frozen leaves the backbone untouched."""
    trainer = Trainer(config(dataset, tmp_path / variant, variant=variant, max_steps=3, save_every=3, ema_decay=None))
    backbone_before = {k: v.clone() for k, v in trainer.policy.backbone.state_dict().items()}
    history = trainer.train()
    assert len(history) == 3 and all(math.isfinite(r["loss"]) for r in history)
    ce, flow = [r["ce"] for r in history], [r["flow"] for r in history]
    assert all(c == 0 for c in ce) if variant in ("pi0", "frozen") else all(c > 0 for c in ce)
    assert all(f == 0 for f in flow) if variant == "pi0_fast" else all(f > 0 for f in flow)
    after = trainer.policy.backbone.state_dict()
    unchanged = all(torch.equal(backbone_before[k], after[k]) for k in after)
    assert unchanged == (variant == "frozen")
    assert KIPolicy.from_pretrained(tmp_path / variant / "final").cfg.variant == variant


def test_delta_action_model_is_normalized_by_the_deltas(dataset, tmp_path):
    """A delta-action model's checkpoint carries the stats of action - state (grippers absolute), not the dataset's
    absolute ones, and its FAST tokenizer is fitted on those deltas."""
    import numpy as np
    import yaml

    from ki_vla.data.lerobot import LeRobotDataset
    from ki_vla.data.samples import ChunkDataset

    model = yaml.safe_load((ROOT / "config/model/tiny.yaml").read_text())
    model.update(delta_actions=True, absolute_action_dims=[6, 13])
    (tmp_path / "delta.yaml").write_text(yaml.safe_dump(model))
    Trainer(config(dataset, tmp_path / "run", model=str(tmp_path / "delta.yaml"), max_steps=2, save_every=2)).train()
    policy = KIPolicy.from_pretrained(tmp_path / "run" / "final")
    assert policy.cfg.delta_actions and policy.cfg.absolute_action_dims == (6, 13)
    robot = ChunkDataset(LeRobotDataset(dataset), horizon=policy.cfg.horizon, camera_names=[])
    chunks, states = robot.all_action_chunks(), robot.chunk_states()
    deltas = chunks - states[:, None, :] * np.array([0.0 if i in (6, 13) else 1.0 for i in range(14)], np.float32)
    stats = policy.processor.normalizer.stats["action"]
    np.testing.assert_allclose(stats["q99"], np.quantile(deltas.reshape(-1, 14), 0.99, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(policy.processor.unnormalize_actions(
        policy.processor.normalize_actions(chunks[0], states[0]), states[0]), chunks[0], atol=1e-5)
    assert (tmp_path / "run" / "fast_tokenizer").is_dir()


def test_config_errors(dataset, tmp_path):
    with pytest.raises(ValueError, match="train config: unknown key"):
        TrainConfig.load(None, ["nope=1"])
    with pytest.raises(ValueError, match="not key=value"):
        TrainConfig.load(None, ["dataset"])
    with pytest.raises(ValueError, match="vlm_ratio"):
        TrainConfig.load(None, ["vlm_ratio=0.5"])
    with pytest.raises(ValueError, match="does not exist"):
        Trainer(config(tmp_path / "missing", tmp_path / "o"))
    cfg = TrainConfig.load(str(ROOT / "config/train/tiny.yaml"), ["max_steps=7", "betas=[0.8, 0.9]", "resume=true"])
    assert cfg.max_steps == 7 and cfg.betas == (0.8, 0.9) and cfg.resume is True


def test_dry_run_counts(capsys):
    from ki_vla.cli import main

    assert main(["train", "--config", str(ROOT / "config/train/pi05.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trainable 3,353,433,872" in out and "GiB" in out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_gloo(dataset, tmp_path, strategy):
    """Two CPU processes with the gloo backend train the same model; the checkpoint loads."""
    out = tmp_path / strategy
    ema = "0.9" if strategy == "ddp" else "null"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(29500 + os.getpid() % 1000 + (7 if strategy == "fsdp" else 0)),
           "-m", "ki_vla.train.cli", "--config", str(ROOT / "config/train/tiny.yaml"), f"dataset={dataset}",
           f"output_dir={out}", "max_steps=4", "batch_size=2", "save_every=2", "log_every=1", f"distributed={strategy}",
           f"ema_decay={ema}", "progress=false", "tensorboard=false", "fast_vocab_size=256"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    policy = KIPolicy.from_pretrained(out / "final")
    assert torch.isfinite(policy.sample_actions(policy.example_batch(1))).all()


def _vlm_folder(root: Path) -> Path:
    import cv2
    import numpy as np

    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "0.png"), np.full((16, 16, 3), 200, np.uint8))
    (root / "samples.jsonl").write_text(
        json.dumps({"image": "images/0.png", "prompt": "What colour is the cube?", "answer": "red"}) + "\n"
        + json.dumps({"image": None, "prompt": "Say hi.", "answer": "hi"}) + "\n")
    return root


def test_ddp_cotraining_survives_action_free_micro_batches(dataset, tmp_path):
    """A micro-batch of VLM samples only gives the expert no flow loss; DDP (find_unused_parameters=False) used to
    fail the next step ("Expected to have finished reduction"). Both ranks must end with identical weights."""
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(29500 + os.getpid() % 1000 + 13),
           str(ROOT / "test" / "ddp_cotrain_worker.py"), str(out), f"model={ROOT / 'config/model/tiny.yaml'}",
           f"dataset={dataset}", f"output_dir={tmp_path / 'run'}", f"vlm_dataset={_vlm_folder(tmp_path / 'vlm')}",
           "vlm_ratio=0.6", "max_steps=6", "batch_size=1", "save_every=6", "ema_decay=null", "progress=false",
           "tensorboard=false", "fast_vocab_size=256", "distributed=ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    flags = [f for rank in data["has_robot"] for f in rank]
    assert not all(flags) and any(flags), flags  # some micro-batches were action-free, some were not
    a, b = data["checksums"]
    assert a == b


def test_fit_tokenizer_cli_then_train_uses_it(dataset, tmp_path, capsys):
    import shutil

    from ki_vla.cli import main

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    assert main(["fit-tokenizer", "--dataset", str(ds), "--vocab-size", "300"]) == 0
    out = capsys.readouterr().out
    assert "tokens/chunk" in out and "round-trip RMS" in out
    assert (ds / "meta" / "fast_tokenizer").is_dir()
    Trainer(config(ds, tmp_path / "run", max_steps=2, save_every=2)).train()
    policy = KIPolicy.from_pretrained(tmp_path / "run" / "final")
    assert policy.fast_tokenizer.vocab_size == 300
    assert main(["fit-tokenizer", "--dataset", str(tmp_path / "missing")]) == 2


def test_cotraining_mixture_trains_ce_on_vlm_samples(dataset, tmp_path):
    """vlm_dataset + vlm_ratio: action-free VLM samples enter the batches (CE only) next to robot samples."""
    vlm = _vlm_folder(tmp_path / "vlm")
    trainer = Trainer(config(dataset, tmp_path / "run", vlm_dataset=str(vlm), vlm_ratio=0.5, max_steps=3, save_every=3))
    samples = [trainer.dataset[i] for i in trainer.schedule.indices(0, 0, 0)]
    assert any(s["is_vlm"] for s in samples) and not all(s["is_vlm"] for s in samples)
    batch = trainer.policy.processor(samples)
    vlm_rows = torch.tensor([s["is_vlm"] for s in samples])
    assert not batch["action_valid"][vlm_rows].any() and batch["target_valid"][vlm_rows].any(dim=1).all()
    history = trainer.train()
    assert len(history) == 3 and all(r["ce"] > 0 for r in history)


def _grads_at_each_update(trainer: Trainer) -> list[list[torch.Tensor]]:
    """The gradients the optimizer sees at every step (Adam's normalization would amplify float noise in the
    weights of near-zero-gradient elements, so the gradients are what to compare)."""
    seen, step = [], trainer.optimizer.step

    def capture(*args, **kwargs):
        seen.append([p.grad.detach().clone() for p in trainer.policy.parameters() if p.grad is not None])
        return step(*args, **kwargs)

    trainer.optimizer.step = capture
    return seen


def test_accumulation_and_checkpointing_match_the_plain_step(dataset, tmp_path):
    """Gradient checkpointing recomputes activations without changing the math; 2 x 2 accumulation is one batch of
    4 up to float error (loss normalized by the step's token counts, flow noise drawn per sample)."""
    plain_trainer = Trainer(config(dataset, tmp_path / "a", max_steps=2, save_every=2, ema_decay=None))
    plain_grads = _grads_at_each_update(plain_trainer)
    plain = plain_trainer.train()
    ckpt = Trainer(config(dataset, tmp_path / "b", max_steps=2, save_every=2, ema_decay=None,
                          gradient_checkpointing=True)).train()
    assert [r["loss"] for r in plain] == pytest.approx([r["loss"] for r in ckpt], rel=1e-5)
    accum_trainer = Trainer(config(dataset, tmp_path / "c", max_steps=2, save_every=2, ema_decay=None, batch_size=2,
                                   grad_accum_steps=2))
    # the two micro-batches of a step are exactly the plain run's batch
    for step in range(2):
        micro = accum_trainer.schedule.indices(step, 0, 0) + accum_trainer.schedule.indices(step, 0, 1)
        assert micro == plain_trainer.schedule.indices(step, 0, 0)
    accum_grads = _grads_at_each_update(accum_trainer)
    accum = accum_trainer.train()
    assert len(accum) == 2
    for a, b in zip(accum, plain):
        for k in ("loss", "ce", "flow"):
            assert a[k] == pytest.approx(b[k], rel=1e-5), (k, a, b)
    # Step 1 starts from the same weights: its gradients must agree to float error (a 20% tolerance hid the bug
    # that each micro-batch averaged over its own token count).
    scale = max(float(g.abs().max()) for g in plain_grads[0])
    for g_acc, g_plain in zip(accum_grads[0], plain_grads[0], strict=True):
        torch.testing.assert_close(g_acc, g_plain, rtol=1e-4, atol=1e-5 * scale)


def test_non_finite_loss_stops_before_the_update(dataset, tmp_path, monkeypatch):
    """A NaN loss must not reach optimizer.step(): the weights stay as the last finite step left them."""
    trainer = Trainer(config(dataset, tmp_path / "nan", max_steps=3, save_every=3, ema_decay=None))
    trainer.train(until=1)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    real = trainer.policy.compute_loss

    def poisoned(batch, generator=None):
        out = real(batch, generator)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(trainer.policy, "compute_loss", poisoned)
    trainer.start_step = 1
    with pytest.raises(FloatingPointError, match="step 2"):
        trainer.train()
    after = trainer.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ranks_read_disjoint_samples_that_mix_episodes(dataset, tmp_path):
    """Per step, the ranks' micro-batches are disjoint slices of one global order (no sample read twice in an
    epoch), and that order is shuffled over every episode, not over a block of a few."""
    from ki_vla.train.trainer import StepSchedule

    trainer = Trainer(config(dataset, tmp_path / "sched", max_steps=2, save_every=2))
    sched = StepSchedule(trainer.dataset, seed=0, batch_size=2, accum=2, world_size=2)
    n = len(trainer.dataset)
    seen: list[int] = []
    for step in range(n // sched.global_batch):
        parts = [sched.indices(step, rank, micro) for micro in range(2) for rank in range(2)]
        flat = [i for p in parts for i in p]
        assert len(set(flat)) == len(flat) == sched.global_batch
        seen += flat
    assert len(set(seen)) == len(seen)  # one epoch: nothing twice
    episodes = {trainer.dataset.locate(i)[0] for i in seen[:8]}
    assert episodes == {0, 1}  # both episodes of the fixture within the first global batches


def test_start_frames_are_oversampled_and_the_order_stays_a_function_of_the_seed(dataset, tmp_path):
    """start_frames / start_repeat: each episode's first frames appear start_repeat times per epoch, every other
    frame once; the schedule still walks whole epochs and two schedules from one seed agree (exact resume)."""
    from collections import Counter

    from ki_vla.train.trainer import StepSchedule

    trainer = Trainer(config(dataset, tmp_path / "start", max_steps=2, save_every=2, start_frames=3, start_repeat=4))
    ds = trainer.dataset
    order = ds.block_order(0, 0, start_frames=3, start_repeat=4)
    counts = Counter(order)
    assert len(order) == len(ds) + ds.num_episodes * 3 * 3
    for ep in range(ds.num_episodes):
        frames = list(ds.episode_range(ep))
        assert all(counts[i] == 4 for i in frames[:3]) and all(counts[i] == 1 for i in frames[3:])
    a, b = (StepSchedule(ds, seed=0, batch_size=2, accum=1, world_size=1, start_frames=3, start_repeat=4)
            for _ in range(2))
    steps = len(order) // 2
    assert [a.indices(s, 0, 0) for s in range(steps + 3)] == [b.indices(s, 0, 0) for s in range(steps + 3)]
    assert Counter(i for s in range(steps) for i in a.indices(s, 0, 0)) == counts   # one epoch = the order
    with pytest.raises(ValueError, match="start_repeat"):
        ds.block_order(0, 0, start_frames=3, start_repeat=0)


def test_validation_holds_out_the_last_episodes_and_logs_their_loss(dataset, tmp_path):
    trainer = Trainer(config(dataset, tmp_path / "val", max_steps=4, save_every=4, val_episodes=1, val_every=2,
                             val_batches=2, batch_size=2))
    assert trainer.dataset.num_episodes == 1 and trainer.val_dataset.num_episodes == 1
    train_eps = {trainer.dataset[i]["episode_index"] for i in range(len(trainer.dataset))}
    val_eps = {trainer.val_dataset[i]["episode_index"] for i in range(len(trainer.val_dataset))}
    assert train_eps.isdisjoint(val_eps)
    first = trainer.validate()
    assert first == trainer.validate()  # fixed samples and noise: the same weights give the same number
    rows = trainer.train()
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val_rows] == [2, 4] and all(r["val_loss"] > 0 and r["val_flow"] > 0 for r in val_rows)
    with pytest.raises(ValueError, match="val_episodes"):
        Trainer(config(dataset, tmp_path / "val2", val_episodes=2))


def test_state_dropout_zeroes_the_expert_state_of_a_seeded_fraction(dataset, tmp_path):
    trainer = Trainer(config(dataset, tmp_path / "drop", state_dropout=0.5, batch_size=8, max_steps=2))
    rows = [trainer._micro_batch(s, 0)["state"] for s in range(6)]
    dropped = torch.cat([(r == 0).all(dim=1) for r in rows])
    assert 0 < int(dropped.sum()) < len(dropped)  # some, not all
    again = [trainer._micro_batch(s, 0)["state"] for s in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(rows, again))  # a pure function of the step
    plain = Trainer(config(dataset, tmp_path / "plain", batch_size=8, max_steps=2))
    assert not (plain._micro_batch(0, 0)["state"] == 0).all(dim=1).any()
    with pytest.raises(ValueError, match="state_dropout"):
        config(dataset, tmp_path / "bad", state_dropout=1.0)


def test_data_loader_workers_build_the_same_batches_and_weights(dataset, tmp_path):
    """num_workers only moves decoding and tokenizing into other processes: the batches, and so the trained
    weights, are those of the in-process loop (the data order stays a pure function of seed and step)."""
    runs = {}
    for workers in (0, 2):
        trainer = Trainer(config(dataset, tmp_path / f"w{workers}", max_steps=3, save_every=3, grad_accum_steps=2,
                                 num_workers=workers, ema_decay=None))
        batches = list(trainer._batches(0, 3))
        assert [(s, m) for s, m, _ in batches] == [(s, m) for s in range(3) for m in range(2)]
        trainer.train()
        runs[workers] = (batches, trainer.policy.state_dict())
    for (_, _, a), (_, _, b) in zip(runs[0][0], runs[2][0]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(runs[0][1][k], runs[2][1][k]) for k in runs[0][1])
    with pytest.raises(ValueError, match="num_workers"):
        config(dataset, tmp_path / "bad", num_workers=-1)


def test_image_augmentation_is_seeded_by_the_step(dataset, tmp_path):
    plain = Trainer(config(dataset, tmp_path / "plain", max_steps=2))
    shifted = Trainer(config(dataset, tmp_path / "aug", max_steps=2, image_shift=3, color_jitter=0.2))
    a, b = shifted._micro_batch(1, 0)["images"], shifted._micro_batch(1, 0)["images"]
    assert torch.equal(a, b) and not torch.equal(a, plain._micro_batch(1, 0)["images"])
    assert not torch.equal(a, shifted._micro_batch(2, 0)["images"])  # a new draw every step
    with pytest.raises(ValueError, match="image_shift"):
        config(dataset, tmp_path / "bad", image_rotate=-1.0)


def test_bf16_model_trains_with_float32_master_weights(dataset, tmp_path):
    """A `dtype: bfloat16` model (pi05's) keeps float32 weights, gradients and AdamW state while training: one
    step at lr 5e-6 changes most weights, where bf16 weights of this size round most updates away; the
    checkpoint still serves in bfloat16."""
    import dataclasses

    from ki_vla import PolicyConfig

    base = PolicyConfig.from_yaml(ROOT / "config/model/tiny.yaml")
    model = tmp_path / "bf16.yaml"
    dataclasses.replace(base, dtype="bfloat16").to_yaml(model)
    fractions = {}
    for master in ("float32", "model"):
        trainer = Trainer(config(dataset, tmp_path / master, model=str(model), max_steps=1, lr=5e-6, warmup_steps=0,
                                 ema_decay=None, master_weights=master))
        before = {k: v.detach().clone() for k, v in trainer.policy.named_parameters()}
        trainer.train()
        after = dict(trainer.policy.named_parameters())
        moved = sum(int((after[k] != before[k]).sum()) for k in before if after[k].numel() > 64)
        total = sum(after[k].numel() for k in before if after[k].numel() > 64)
        fractions[master] = moved / total
        assert {p.dtype for p in after.values()} == {torch.float32 if master == "float32" else torch.bfloat16}
    # measured: 0.84 (the rest: embedding rows of tokens absent from the batch, zero gradient) vs 0.09
    assert fractions["float32"] > 0.8 and fractions["model"] < 0.2, fractions
    served = KIPolicy.from_pretrained(tmp_path / "float32" / "final")
    assert served.cfg.dtype == "bfloat16" and next(served.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="master_weights"):
        config(dataset, tmp_path / "bad", master_weights="fp16")


def test_sigterm_checkpoints_and_exits_zero_then_resumes(dataset, tmp_path):
    """How SLURM and Kubernetes preempt: SIGTERM mid-run finishes the step, writes a checkpoint, exits 0; the same
    command resumes from it."""
    import signal as _signal
    import time

    out = tmp_path / "pre"
    cmd = [sys.executable, "-m", "ki_vla.cli", "train", "--config", "config/train/tiny.yaml", f"dataset={dataset}",
           f"output_dir={out}", "save_every=100000", "log_every=1", "progress=false", "tensorboard=false",
           "fast_vocab_size=256", "batch_size=2"]
    proc = subprocess.Popen([*cmd, "max_steps=100000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, \
            proc.stdout.read() if proc.poll() is not None else "slow"
        time.sleep(0.2)
    proc.send_signal(_signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text
    assert "preempted (SIGTERM): checkpoint at step" in text
    saved = sorted((out / "checkpoints").iterdir())
    assert len(saved) == 1 and not (out / "final").exists()
    step = int(saved[0].name.split("_")[-1])
    assert step >= 3
    resumed = subprocess.run([*cmd, f"max_steps={step + 2}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[-2:] == [step + 1, step + 2] and (out / "final").is_dir()
