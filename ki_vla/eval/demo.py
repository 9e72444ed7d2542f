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

"""`make demo`: the whole path on one machine, from nothing to a closed-loop report.

1. collect scripted transfer-cube demonstrations in the MuJoCo sim (LeRobot v3 dataset),
2. train the `small` KI policy on them with the CPU recipe (`config/train/sim_cpu.yaml`, fewer steps; FAST
   tokenizer and stats fitted on the fly),
3. run the ROS 2 graph (sim_node, camera_node, policy_node, executor_node) in the sim, in real time, the task's
   instruction published on /instruction, and measure success, latency and control rate (`ki-vla eval-sim`),
4. write outputs/demo/report.md and metrics.json (videos, the training curve, what the policy learned).

Working files (dataset, checkpoint, the full eval report) go to outputs/demo_work/. The defaults are sized for
30 minutes on a 2-core CPU, venv included; the full recipe (README) trains 3x longer on 50 demonstrations.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ki_vla.cli import parse_image_size

TASK = "transfer_cube"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/demo", help="report folder (default outputs/demo)")
    p.add_argument("--work", default="outputs/demo_work", help="dataset, checkpoint and eval report")
    p.add_argument("--device", default="cpu", help="training and policy device: cpu | cuda")
    p.add_argument("--collect-episodes", type=int, default=40)
    p.add_argument("--train-steps", type=int, default=2500)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--image-size", type=parse_image_size, default=(120, 160), metavar="HxW",
                   help="sim camera images, collected and evaluated alike (default 120x160)")
    p.add_argument("--vcodec", default="h264",
                   help="video codec of the scratch dataset (h264: encodes and decodes several times faster than av1)")
    p.add_argument("--action-noise", type=float, default=0.08, metavar="RAD",
                   help="DART noise on the demonstrations' executed arm commands (ki-vla collect --action-noise)")
    p.add_argument("--train-config", default="config/train/sim_cpu.yaml",
                   help="training recipe; --train-steps overrides its max_steps (the schedule follows)")
    p.add_argument("--model", default=None,
                   help="model config (default: the training recipe's); the demonstrations render its cameras only")
    p.add_argument("--noise-scale", type=float, default=None, metavar="S",
                   help="scale of the policy's flow noise in [0, 1] at evaluation (default: the checkpoint's, 1)")
    return p.parse_args(argv)


def eval_arguments(args: argparse.Namespace, checkpoint: Path, report: Path) -> argparse.Namespace:
    """The demo's evaluation is exactly `ki-vla eval-sim` with these arguments (parsed by eval-sim's own parser)."""
    from ki_vla.eval.cli import sim as sim_cli

    h, w = args.image_size
    parser = argparse.ArgumentParser()
    sim_cli.add_arguments(parser)
    return parser.parse_args([
        "--model", str(checkpoint), "--task", TASK, "--episodes", str(args.eval_episodes), "--report", str(report),
        "--seed", "1000", "--mode", "realtime", "--videos", str(min(3, args.eval_episodes)), "--device", args.device,
        "--sim-image-size", f"{h}x{w}"]
        + (["--noise-scale", str(args.noise_scale)] if args.noise_scale is not None else []))


def _timed(label: str, times: dict[str, float], fn):
    print(f"\n== {label}", flush=True)
    start = time.perf_counter()
    result = fn()
    times[label] = time.perf_counter() - start
    print(f"== {label}: {times[label]:.0f} s", flush=True)
    return result


def run_demo(argv: list[str] | None = None) -> int:
    from ki_vla.eval.cli import sim as sim_cli
    from ki_vla.eval.closed_loop import describe_outcomes
    from ki_vla.eval.report import Report, check_report_target, fmt, line_plot
    from ki_vla.sim.collect import CollectConfig, collect_dataset
    from ki_vla.train.config import TrainConfig
    from ki_vla.train.trainer import Trainer

    from ki_vla.model.config import PolicyConfig

    args = parse_args(argv)
    h, w = args.image_size
    out, work = Path(args.out), Path(args.work)
    # Loaded before collecting: a bad recipe fails in a second, and the demonstrations render only its cameras.
    cfg = TrainConfig.load(args.train_config, ([f"model={args.model}"] if args.model else []) + [
        f"dataset={work / 'data'}", f"output_dir={work / 'train'}", f"max_steps={args.train_steps}",
        f"save_every={max(1, args.train_steps // 4)}", f"log_every={max(1, args.train_steps // 200)}",
        f"warmup_steps={min(500, args.train_steps // 10)}", f"device={args.device}", "tensorboard=false"])
    cameras = tuple(PolicyConfig.from_yaml(cfg.model).camera_names)
    check_report_target(out)
    if work.exists():
        shutil.rmtree(work)  # the demo's own scratch space: always rebuilt from nothing
    work.mkdir(parents=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    summary = _timed(f"1/3 collect {args.collect_episodes} scripted {TASK} demonstrations", times,
                     lambda: collect_dataset(CollectConfig(
                         task=TASK, episodes=args.collect_episodes, out=work / "data", image_size=(h, w),
                         cameras=cameras, vcodec=args.vcodec, action_noise=args.action_noise,
                         max_attempts=4 * args.collect_episodes)))
    history = _timed(f"2/3 train {args.train_steps} steps ({args.device})", times, lambda: Trainer(cfg).train())
    checkpoint = work / "train" / "final"
    eval_args = eval_arguments(args, checkpoint, work / "eval")
    ev = _timed(f"3/3 closed loop through ROS 2: {args.eval_episodes} episodes", times,
                lambda: sim_cli.evaluate(eval_args))
    total = time.perf_counter() - t0

    metrics = {
        "success_rate": ev["success_rate"], "success_rate_ci95": ev["success_rate_ci95"], "episodes": ev["episodes"],
        "latency_ms_p50": ev["latency_ms_p50"], "latency_ms_p99": ev["latency_ms_p99"],
        "control_rate_hz": ev["control_rate_hz"], "mean_reward_fraction": ev["mean_reward_fraction"],
        "task": TASK, "device": args.device, "collected_episodes": summary.kept,
        "scripted_success_rate": summary.scripted_success_rate, "train_steps": args.train_steps,
        "final_train_loss": history[-1]["loss"] if history else None, "wall_seconds": total,
        "phase_seconds": times, "checkpoint": str(checkpoint), "eval_report": str(work / "eval"),
    }
    rep = Report("ki_vla_ros demo: scripted demos -> KI training -> ROS 2 closed loop")
    low, high = ev["success_rate_ci95"]
    rep.paragraph(f"Everything below ran on this machine ({args.device}) in {total / 60:.1f} minutes, from nothing.")
    rep.table(["", "result"], [
        ["demonstrations", f"{summary.kept} scripted `{TASK}` episodes at {h}x{w} (scripted success "
                           f"{fmt(summary.scripted_success_rate, 3)}), {fmt(times[next(iter(times))], 3)} s"],
        ["training", f"`{Path(cfg.model).stem}` KI policy ({args.train_config}), {args.train_steps} steps x batch "
                     f"{cfg.batch_size}, {fmt(times[next(t for t in times if t.startswith('2/3'))] / 60, 3)} min, "
                     f"final flow loss {fmt(history[-1]['flow'] if history else float('nan'), 3)}"],
        ["closed loop (ROS 2 graph, sim in real time)",
         f"success {ev['successes']}/{ev['episodes']} = {fmt(ev['success_rate'], 3)}, 95% CI [{fmt(low, 3)}, "
         f"{fmt(high, 3)}]"],
        ["observation-to-chunk latency p50 / p99",
         f"{fmt(ev['latency_ms_p50'], 4)} / {fmt(ev['latency_ms_p99'], 4)} ms"],
        ["executor command rate", f"{fmt(ev['control_rate_hz'], 4)} Hz (target 50)"],
        ["chunks accepted / rejected by the executor's safety checks",
         f"{ev['executor_accepted_chunks']} / {ev['executor_rejected_chunks']}"],
        ["mean task progress (reward stages reached)", fmt(ev["mean_reward_fraction"], 3)],
    ])
    rep.paragraph("What the policy learned, and where it still fails: "
                  f"{describe_outcomes([int(p['max_reward']) for p in ev['per_episode']], TASK)} "
                  "Success is counted as ACT counts it (the goal reached at any tick); the interval is a 95% Wilson "
                  "interval, wide at 10 episodes. `ki-vla eval-sim --episodes 50` and `ki-vla learning-curve` give "
                  "tighter numbers; the README's CPU recipe trains longer on 50 demonstrations.")
    if history:
        steps = [r["step"] for r in history]
        rep.figure(line_plot(steps, {"loss": [r["loss"] for r in history],
                                     "ce (FAST tokens)": [r["ce"] for r in history],
                                     "flow": [r["flow"] for r in history]},
                             title="Training loss", xlabel="step", ylabel="loss"),
                   "training_loss.png",
                   "Training loss: total, FAST-token cross-entropy (backbone) and flow matching (expert).")
    rep.heading("Episodes")
    lines = []
    for p in ev["per_episode"]:
        line = (f"seed {p['seed']}: {'success' if p['success'] else 'failure'}, reached "
                f"{fmt(p['reward_fraction'], 3)} of the task")
        if p.get("video"):
            rep.add_file(p["video"], (work / "eval" / p["video"]).read_bytes())
            line += f" ([video]({p['video']}))"
        lines.append(line)
    rep.bullets(lines)
    rep.paragraph(f"Full evaluation report: `{work / 'eval' / 'report.md'}`; checkpoint: `{checkpoint}` "
                  f"(`ki-vla-ros up --model {checkpoint} --sim` runs it live).")
    rep.write(out, metrics)
    print(f"\ndemo done in {total / 60:.1f} min: success {ev['successes']}/{ev['episodes']}, latency p50 "
          f"{ev['latency_ms_p50']:.0f} ms, control {ev['control_rate_hz']:.1f} Hz -> {out / 'report.md'}")
    print(json.dumps({k: metrics[k] for k in ("success_rate", "episodes", "latency_ms_p50", "control_rate_hz")}))
    return 0 if np.isfinite(ev["control_rate_hz"]) else 1
