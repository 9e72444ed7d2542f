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

"""`ki-vla study --out DIR`: the knowledge-insulation study, every variant on the same data, seeds and budget.

Steps: collect transfer_color demonstrations (or take `--dataset`), write the scene-question co-training set,
derive the model config (the `smol` model with cheap image settings), train and evaluate each variant in its own
process (`ki_vla.study.run`), then write `study.json`, `report.md` and plots. A variant whose
`DIR/<variant>/study_result.json` exists is not run again, so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ki_vla import procs
from ki_vla.paths import resolve

VARIANTS = ("ki", "joint", "pi0", "frozen", "pi0_fast", "ki_cotrain")
help = "the knowledge-insulation study: ki, joint, pi0, frozen, pi0_fast, ki_cotrain on the same data (report + JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="study folder (data, one folder per variant, report.md)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--steps", type=int, default=100, help="training steps per variant (default 100)")
    parser.add_argument("--task", default="transfer_color", choices=("transfer_color",),
                        help="sim task (language following needs the colour instruction)")
    parser.add_argument("--dataset", default=None, help="an existing LeRobot dataset of the task (default: collect)")
    parser.add_argument("--episodes", type=int, default=24, help="demonstrations to collect (default 24)")
    parser.add_argument("--val-episodes", type=int, default=4, help="held-out episodes (default 4)")
    parser.add_argument("--model", default="config/model/smol.yaml", help="model config (default: smol)")
    parser.add_argument("--image-size", type=int, default=96, help="model and data image size (default 96)")
    parser.add_argument("--cameras", default="cam_high", help="cameras the policy sees (default cam_high)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--segments", type=int, default=4, help="evaluations along training (default 4)")
    parser.add_argument("--per-episode", type=int, default=6, help="held-out frames per held-out episode")
    parser.add_argument("--vlm-ratio", type=float, default=0.25, help="ki_cotrain: fraction of scene-question samples")
    parser.add_argument("--scenes", type=int, default=200, help="ki_cotrain: scenes rendered for questions")
    parser.add_argument("--target-fraction", type=float, default=0.5,
                        help="target action MSE as a fraction of the hold-still error (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def _check(args: argparse.Namespace) -> list[str]:
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"--variants must be distinct names from {VARIANTS}, got {args.variants!r}")
    for flag, value, low in (("--steps", args.steps, 1), ("--episodes", args.episodes, 2),
                             ("--val-episodes", args.val_episodes, 1), ("--batch-size", args.batch_size, 1),
                             ("--segments", args.segments, 1), ("--per-episode", args.per_episode, 1),
                             ("--scenes", args.scenes, 1), ("--image-size", args.image_size, 16)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.val_episodes >= args.episodes and args.dataset is None:
        raise ValueError("--val-episodes must leave episodes to train on")
    if not 0 < args.vlm_ratio < 1 or not 0 < args.target_fraction <= 1 or args.lr <= 0:
        raise ValueError("--vlm-ratio must be in (0, 1), --target-fraction in (0, 1], --lr > 0")
    return names


def _collect(args: argparse.Namespace, out: Path) -> Path:
    data = out / "data"
    if (data / "meta" / "info.json").is_file():
        return data
    cmd = [sys.executable, "-m", "ki_vla.cli", "collect", "--task", args.task, "--episodes", str(args.episodes),
           "--out", str(data), "--image-size", f"{args.image_size}x{args.image_size}", "--cameras", args.cameras,
           "--seed", str(args.seed), "--vcodec", "h264", "--max-attempts", str(args.episodes * 4), "--overwrite"]
    if args.no_progress:
        cmd.append("--no-progress")
    print("[study] collecting:", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return data


def _model_config(args: argparse.Namespace, out: Path) -> Path:
    """The model config every variant starts from: `--model` with the study's cameras and image size."""
    from ki_vla.model.config import PolicyConfig

    cfg = PolicyConfig.from_yaml(resolve(args.model)).to_dict()
    cfg["camera_names"] = [c.strip() for c in args.cameras.split(",") if c.strip()]
    cfg["vision"]["image_size"] = args.image_size
    PolicyConfig.from_dict(cfg)  # validated before any variant runs
    path = out / "model.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _spec(args: argparse.Namespace, name: str, data: Path, model: Path, vlm: Path | None, out: Path) -> dict:
    seg = [max(1, round(args.steps * (k + 1) / args.segments)) for k in range(args.segments)]
    train: dict[str, Any] = {
        "model": str(model), "variant": "ki" if name == "ki_cotrain" else name, "dataset": str(data),
        "output_dir": str(out / name), "max_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "warmup_steps": max(1, args.steps // 10), "ema_decay": None, "seed": args.seed,
        "val_episodes": args.val_episodes, "val_every": seg[0], "val_batches": 2, "save_every": args.steps,
        "keep_checkpoints": 1, "log_every": 10, "tensorboard": False, "progress": not args.no_progress}
    if name == "ki_cotrain":
        train.update(vlm_dataset=str(vlm), vlm_ratio=args.vlm_ratio)
    return {"name": name, "train": train, "segments": sorted(set(seg)), "per_episode": args.per_episode,
            "seed": args.seed}


def _run_child(spec: dict, folder: Path) -> dict:
    from ki_vla.study.run import RESULT_FILE

    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "study_spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    # procs.start: the child dies with this process (a killed study leaves no training running behind it)
    proc = procs.start([sys.executable, "-m", "ki_vla.study.run", str(spec_path)], folder / "study_log.txt")
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory (Linux: ru_maxrss in KiB)
    finally:
        if proc.returncode is None and proc.poll() is None:
            procs.stop(proc)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (folder / "study_log.txt").read_text().splitlines()[-5:]
        raise RuntimeError(f"variant {spec['name']} failed (exit {proc.returncode}); see {folder / 'study_log.txt'}: "
                           + " | ".join(tail))
    result = json.loads((folder / RESULT_FILE).read_text())
    result["peak_rss_gib"] = usage.ru_maxrss / 2**20
    (folder / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def run(args: argparse.Namespace) -> int:
    from ki_vla.study import report
    from ki_vla.study.scene_qa import write_scene_qa

    names = _check(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.dataset) if args.dataset else _collect(args, out)
    if not (data / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"no LeRobot dataset at {data}")
    vlm = out / "scene_qa" if "ki_cotrain" in names else None
    if vlm is not None and not (vlm / "samples.jsonl").is_file():
        cam = args.cameras.split(",")[0].strip()
        n = write_scene_qa(vlm, args.scenes, (args.image_size, args.image_size), cam, args.seed,
                           progress=not args.no_progress)
        print(f"[study] {n} scene questions in {vlm}", flush=True)
    model = _model_config(args, out)
    results: dict[str, dict] = {}
    for name in names:
        folder = out / name
        done = folder / "study_result.json"
        if done.is_file():
            results[name] = json.loads(done.read_text())
            print(f"[study] {name}: already done ({done})", flush=True)
            continue
        t0 = time.perf_counter()
        print(f"[study] {name}: training {args.steps} steps (log: {folder / 'study_log.txt'})", flush=True)
        results[name] = _run_child(_spec(args, name, data, model, vlm, out), folder)
        print(f"[study] {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    hold = next(iter(results.values()))["hold_still_mse"]
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    settings["model"] = str(model)
    report.write(out, settings, results, args.target_fraction * hold, "ki-vla study " + shlex.join(sys.argv[2:]))
    print(f"[study] report: {out / 'report.md'}", flush=True)
    print((out / "report.md").read_text())
    return 0
