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

"""`ki-vla eval-rollout --model M --task T --episodes N`: fast closed loop without ROS (see ki_vla.eval.rollout).

For sweeps (checkpoints, merge strategies, latency): lockstep on the sim clock, several sims in parallel,
rendering only when the policy reads an observation. The number to report for a robot is `ki-vla eval-sim`'s,
through the ROS graph; this one is its cheap, deterministic twin.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

help = "closed-loop success in the sim without ROS: parallel, lockstep (for learning curves and sweeps)"


def add_rollout_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with `ki-vla learning-curve`."""
    from ki_vla.cli import parse_image_size
    from ki_vla.eval.rollout import STRATEGIES
    from ki_vla.sim.scenes import TASKS

    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1000,
                        help="first episode seed (default 1000: unseen by collect's 0..)")
    parser.add_argument("--workers", type=int, default=2, help="parallel sims, one policy copy each")
    parser.add_argument("--merger", choices=STRATEGIES, default="latest", help="the executor's merge strategy")
    parser.add_argument("--replan-every", type=int, default=10, help="control ticks between policy calls")
    parser.add_argument("--latency-ticks", type=int, default=0, help="ticks an inference takes (0 = lockstep)")
    parser.add_argument("--ensembling-m", type=float, default=0.01, help="temporal ensembling weight exp(-m i)")
    parser.add_argument("--rtc-beta", type=float, default=0.0,
                        help="real-time chunking: guide each chunk toward the committed plan with this clip (paper 5, "
                             "LeRobot 10; 0 = off); pair with --merger rtc")
    parser.add_argument("--rtc-schedule", choices=("exp", "linear"), default="exp", help="RTC prefix weights' decay")
    parser.add_argument("--rtc-method", choices=("guided", "inpaint", "prefix"), default="guided",
                        help="RTC: guided (the paper's VJP per step), inpaint (blend, no gradients) or prefix "
                             "(models trained with rtc_max_delay: the committed actions given exactly)")
    parser.add_argument("--noise-scale", type=float, default=None, metavar="S",
                        help="scale of the flow noise chunks are sampled from, in [0, 1] (default: the checkpoint's "
                             "noise_scale, normally 1); below 1 smooths a young model's chunks")
    parser.add_argument("--target", choices=("red", "blue"), default=None,
                        help="transfer_color: name this cube in every episode (default: drawn per seed)")
    parser.add_argument("--max-seconds", type=float, default=None, help="sim seconds per episode (default: the task's)")
    parser.add_argument("--sim-image-size", type=parse_image_size, default=(120, 160), metavar="HxW")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the summary and per-episode results here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (or a model YAML: random weights)")
    add_rollout_arguments(parser)


def rollout_config(args: argparse.Namespace):
    from ki_vla.eval.rollout import RolloutConfig

    if args.episodes < 1 or args.workers < 1:
        raise ValueError("--episodes and --workers must be >= 1")
    return RolloutConfig(task=args.task, merge_strategy=args.merger, replan_every=args.replan_every,
                         latency_ticks=args.latency_ticks, ensembling_m=args.ensembling_m,
                         sim_image_size=args.sim_image_size, target=args.target,
                         max_seconds=args.max_seconds, rtc_beta=args.rtc_beta, rtc_schedule=args.rtc_schedule,
                         rtc_method=args.rtc_method, noise_scale=args.noise_scale)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ki_vla.eval.rollout import evaluate, summarize
    from ki_vla.paths import resolve

    cfg = rollout_config(args)
    model = resolve(args.model)
    if not model.exists():
        raise FileNotFoundError(f"model not found: {args.model}")
    results = evaluate(model, cfg, list(range(args.seed, args.seed + args.episodes)), args.workers, args.device,
                       progress=not args.quiet)
    summary = summarize(results)
    low, high = summary["success_rate_ci95"]
    line = (f"{args.task}: success {summary['successes']}/{summary['episodes']} = {summary['success_rate']:.2f} "
            f"(95% CI {low:.2f}-{high:.2f}), mean reward {summary['mean_reward_fraction']:.2f} of max, "
            f"rewards {summary['reward_histogram']}")
    if summary["first_chunk_error"] is not None:
        line += f", first-chunk error {summary['first_chunk_error']:.3f} rad"
    if summary["first_chunk_scene_spread"] is not None:
        line += (f", first chunk vs scene: spread {summary['first_chunk_scene_spread']:.2f} of the plan's, "
                 f"correlation {summary['first_chunk_scene_corr']:.2f}")
    if args.task == "transfer_color":
        line += f", wrong cube moved {summary['wrong_cube_moved_rate']:.2f}"
    if summary["switch_jump_mean"] is not None:
        line += (f", chunk-switch jump mean {summary['switch_jump_mean']:.3f} / max {summary['switch_jump_max']:.3f} "
                 f"rad, jerk {summary['jerk_mean']:.0f} rad/s^3")
    print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": str(args.model), "config": asdict(cfg), "summary": summary,
                                               "results": [asdict(r) for r in results]}, indent=1))
    return 0
