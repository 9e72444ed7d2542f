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

"""`ki-vla learning-curve --run OUTPUT_DIR --task T`: closed-loop success against training step.

Evaluates every kept checkpoint of a training run (its EMA weights when the run kept an EMA, as `final/` does)
with the ROS-free parallel rollout (`ki-vla eval-rollout`), on the same seeds for every checkpoint, and writes
`curve.json`, `curve.png` (success with its 95% interval and the training losses against step) and `report.md`.
Keep enough checkpoints for a curve: `keep_checkpoints` in the train config (the CPU recipes keep all).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

WEIGHTS = ("ema", "policy")
help = "success rate against training step: evaluates a run's saved checkpoints in the sim (plot + JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ki_vla.eval.cli.rollout import add_rollout_arguments

    parser.add_argument("--run", required=True, help="a training output folder (holds checkpoints/step_N/)")
    parser.add_argument("--out", required=True, help="folder for curve.json, curve.png and report.md")
    parser.add_argument("--every", type=int, default=1,
                        help="evaluate every k-th checkpoint (the last is always included)")
    parser.add_argument("--weights", choices=WEIGHTS, default="ema",
                        help="which weights of each checkpoint: the EMA (deployed by final/; the live policy when the "
                             "run kept no EMA) or the live policy")
    add_rollout_arguments(parser)


def checkpoints(run_dir: Path, weights: str = "ema") -> list[tuple[int, Path]]:
    """(step, weights folder) of each complete checkpoint, oldest first.

    weights="ema" takes the EMA weights where the run kept them (what `final/` deploys), else the live policy;
    "policy" always takes the live weights, to tell whether the average helps or hurts at a given step.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    out = []
    for ckpt in sorted((run_dir / "checkpoints").glob("step_*")):
        try:
            step = int(ckpt.name.split("_")[1])
        except (IndexError, ValueError):
            continue
        use_ema = weights == "ema" and (ckpt / "ema" / "config.yaml").is_file()
        folder = ckpt / ("ema" if use_ema else "policy")
        if (folder / "config.yaml").is_file():
            out.append((step, folder))
    return sorted(out)


def training_losses(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(points: list[dict], losses: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [p["step"] for p in points]
    ax.plot(steps, [p["success_rate"] for p in points], "o-", color="tab:blue", label="success")
    ax.fill_between(steps, [p["success_rate_ci95"][0] for p in points], [p["success_rate_ci95"][1] for p in points],
                    color="tab:blue", alpha=0.2, label="95% CI")
    ax.plot(steps, [p["mean_reward_fraction"] for p in points], "s--", color="tab:green", label="reward / max")
    ax.set_ylim(0, 1)
    ax.set_xlabel("training step")
    ax.set_ylabel("closed-loop rate")
    if losses:
        ax2 = ax.twinx()
        ax2.semilogy([r["step"] for r in losses], [r["flow"] for r in losses], color="tab:red", alpha=0.5, lw=1,
                     label="flow loss")
        ax2.semilogy([r["step"] for r in losses], [max(r["ce"], 1e-6) for r in losses], color="tab:orange", alpha=0.5,
                     lw=1, label="FAST CE")
        ax2.set_ylabel("training loss (log)")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from ki_vla.atomic import write_json_atomic
    from ki_vla.eval.rollout import evaluate, summarize
    from ki_vla.eval.cli.rollout import rollout_config

    cfg = rollout_config(args)
    run_dir = Path(args.run)
    found = checkpoints(run_dir, args.weights)
    if not found:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoints (checkpoints/step_N/policy)")
    if args.every < 1:
        raise ValueError("--every must be >= 1")
    chosen = found[:: args.every]
    if chosen[-1] != found[-1]:
        chosen.append(found[-1])
    seeds = list(range(args.seed, args.seed + args.episodes))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    points = []
    for step, weights in chosen:
        summary = summarize(evaluate(weights, cfg, seeds, args.workers, args.device, progress=not args.quiet))
        points.append({"step": step, "weights": str(weights), **summary})
        print(f"step {step}: success {summary['successes']}/{summary['episodes']}, "
              f"reward {summary['mean_reward_fraction']:.2f}", flush=True)
        # written after every checkpoint: a long curve can be watched, and an interrupted one keeps its points
        write_json_atomic({"run": str(run_dir), "config": asdict(cfg), "seeds": [seeds[0], seeds[-1]],
                           "points": points}, out / "curve.json")
    title = (f"{args.task}: {args.episodes} episodes per checkpoint (seeds {seeds[0]}-{seeds[-1]}), "
             f"merger {cfg.merge_strategy}, {args.weights} weights")
    plot(points, training_losses(run_dir), title, out / "curve.png")
    rows = "\n".join(f"| {p['step']} | {p['successes']}/{p['episodes']} | {p['success_rate']:.2f} "
                     f"[{p['success_rate_ci95'][0]:.2f}, {p['success_rate_ci95'][1]:.2f}] | "
                     f"{p['mean_reward_fraction']:.2f} | "
                     f"{_fmt(p['first_chunk_error'], '.3f')} | {_fmt(p['first_chunk_scene_spread'], '.2f')} | "
                     f"{_fmt(p['first_chunk_scene_corr'], '.2f')} |"
                     for p in points)
    (out / "report.md").write_text(
        f"# Learning curve: {run_dir}\n\n{title}; executor replans every {cfg.replan_every} ticks, latency "
        f"{cfg.latency_ticks} ticks (ROS-free rollout, lockstep).\n\n![curve](curve.png)\n\n"
        f"| step | successes | rate [95% CI] | reward / max | first-chunk error (rad) | scene spread | scene corr |\n"
        f"|---|---|---|---|---|---|---|\n{rows}\n"
        "\nFirst-chunk error: the chunk predicted before the arm moves against the scripted plan of the same scene "
        "(mean over joints of the largest deviation): only the images tell where the objects are at that point. "
        "Scene spread / corr: across episodes, how much the first chunk's end point varies relative to the plan's, "
        "and how well they correlate (0 / 0: the policy makes the same reach whatever its cameras show).\n")
    print(f"-> {out / 'report.md'}")
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)
