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

"""`ki-vla eval-bag --model M BAG_OR_DATASET [BAG ...] --report DIR`: open-loop (bag replay) evaluation.

At every `--stride`-th recorded frame the policy predicts a chunk from the recorded observation (cameras,
joint state, instruction); the chunk is compared with the recorded next `horizon` actions (steps past the
episode end are masked). Inputs: a LeRobot dataset folder, or rosbag2 recordings (folders with
metadata.yaml, bare .mcap files, or a folder holding several), which are converted first into a temporary
dataset with `ki_vla.data.bag.convert_bags` at the model's rate and image size.

Writes DIR/metrics.json, DIR/report.md and PNG plots (see `ki_vla.eval.report`), prints a short summary.
Heavy imports (torch, the model) happen in `run`, so `ki-vla --help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

help = "open-loop replay of recorded bags or a dataset: per-joint/per-step error, latency, chunk consistency -> report"

log = logging.getLogger(__name__)

BAG_SUFFIXES = (".mcap",)
MAX_TRAJECTORY_JOINTS = 4
MAX_TRAJECTORY_CHUNKS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the subcommand's arguments."""
    parser.add_argument("inputs", nargs="+", metavar="BAG_OR_DATASET",
                        help="a LeRobot dataset folder, or rosbag2 recordings (folders or .mcap files; one per "
                             "episode), or a folder of recordings")
    parser.add_argument("--model", required=True,
                        help="checkpoint folder, or a model YAML (random weights: plumbing only)")
    parser.add_argument("--report", required=True, metavar="DIR",
                        help="report folder (replaced if it holds an older report)")
    parser.add_argument("--stride", type=int, default=10,
                        help="evaluate every K-th frame of each episode (default 10; < horizon to measure chunk "
                             "consistency)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="evaluate at most N frames (the first ones)")
    parser.add_argument("--num-steps", type=int, default=None, metavar="S",
                        help="flow-matching steps (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="observations per forward pass (default 16; 1 = robot latency)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
    parser.add_argument("--bag-config", metavar="YAML",
                        help="convert-bag config for the recordings' topics (see convert-bag)")
    parser.add_argument("--task", help="instruction for every recorded episode (bags without /instruction)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# ---- inputs --------------------------------------------------------------------------------------------
def _is_bag(path: Path) -> bool:
    return (path.is_dir() and (path / "metadata.yaml").is_file()) or (path.is_file() and path.suffix in BAG_SUFFIXES)


def _is_dataset(path: Path) -> bool:
    return path.is_dir() and (path / "meta" / "info.json").is_file()


def classify_inputs(inputs: list[str]) -> tuple[str, list[Path]]:
    """("dataset", [root]) or ("bags", [recordings...]); a folder that is neither is searched one level
    down for recordings (how `ki-vla collect --bag` and `ros2 bag record` runs tend to be stored)."""
    paths = [Path(p).expanduser() for p in inputs]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"input {p} does not exist")
    datasets = [p for p in paths if _is_dataset(p)]
    if datasets:
        if len(paths) > 1:
            raise ValueError(f"give one LeRobot dataset, or only bags: got dataset {datasets[0]} among "
                             f"{len(paths)} inputs")
        return "dataset", datasets
    bags: list[Path] = []
    for p in paths:
        if _is_bag(p):
            bags.append(p)
        elif p.is_dir() and (found := sorted(c for c in p.iterdir() if _is_bag(c))):
            bags.extend(found)
        else:
            raise ValueError(
                f"input {p} is neither a LeRobot dataset (meta/info.json), a rosbag2 recording (metadata.yaml or "
                f".mcap) nor a folder of recordings"
            )
    return "bags", bags


def bag_config(args: argparse.Namespace, cfg: Any) -> Any:
    """The conversion config for the model: its cameras (topics from --bag-config, else `/<name>/image_raw`,
    the stack's convention), its control rate and image size, PNG frames (lossless, no codec needed)."""
    from ki_vla.data.bag import BagConversionConfig

    base = BagConversionConfig.from_yaml(args.bag_config) if args.bag_config else None
    if base is not None:
        missing = [c for c in cfg.camera_names if c not in base.cameras]
        if missing:
            raise ValueError(f"--bag-config {args.bag_config} has no topic for the model's camera(s) {missing} "
                             f"(it maps {sorted(base.cameras)})")
        cameras = {c: base.cameras[c] for c in cfg.camera_names}
    else:
        base = BagConversionConfig()
        cameras = {c: f"/{c}/image_raw" for c in cfg.camera_names}
    if float(cfg.fps) != int(cfg.fps):
        raise ValueError(f"model fps {cfg.fps} is not an integer rate; convert the bags yourself and pass the dataset")
    overrides: dict[str, Any] = dict(cameras=cameras, fps=int(cfg.fps), image_size=(cfg.image_size, cfg.image_size),
                                     resize_mode=cfg.image_resize, use_videos=False)
    if args.task is not None:
        overrides["task"] = args.task
    return dataclasses.replace(base, **overrides)


def check_compatible(ds: Any, cfg: Any, model: str) -> None:
    """The dataset must provide what the model consumes, at the rate its horizon was trained for."""
    from ki_vla.data.lerobot import ACTION_KEY, STATE_KEY

    missing = [c for c in cfg.camera_names if c not in ds.camera_names]
    if missing:
        raise ValueError(f"dataset {ds.root} has cameras {ds.camera_names} but model {model} needs "
                         f"{list(cfg.camera_names)} (missing {missing})")
    for what, key, dim in (("state", STATE_KEY, cfg.state_dim), ("action", ACTION_KEY, cfg.action_dim)):
        have = int(ds.column(key).shape[1])
        if have != dim:
            raise ValueError(f"dataset {ds.root} has {have}-D {what} but model {model} expects {dim}-D")
    if abs(ds.fps - float(cfg.fps)) > 1e-6:
        raise ValueError(f"dataset {ds.root} is recorded at {ds.fps:g} Hz but model {model} predicts at "
                         f"{cfg.fps:g} Hz; its horizon steps would not line up with the recorded actions")


def _check_args(args: argparse.Namespace) -> None:
    for name in ("stride", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("max_frames", "num_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


# ---- the command ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Validate everything cheap first (inputs, report folder, model), then convert, replay and report."""
    import torch

    from ki_vla.data.bag import convert_bags
    from ki_vla.data.lerobot import LeRobotDataset
    from ki_vla.data.samples import ChunkDataset
    from ki_vla.eval.offline import policy_predictor, run_open_loop, select_frames, summarize
    from ki_vla.eval.report import check_report_target
    from ki_vla.model.policy import KIPolicy
    from ki_vla.paths import resolve

    _check_args(args)
    kind, inputs = classify_inputs(args.inputs)
    report_dir = Path(args.report)
    check_report_target(report_dir)
    from ki_vla.device import resolve_device

    device = str(resolve_device(args.device))
    model_path = resolve(args.model)
    random_weights = model_path.is_file() and model_path.suffix in (".yaml", ".yml")
    policy = KIPolicy.load(model_path, device=device)
    cfg = policy.cfg
    conversion = bag_config(args, cfg) if kind == "bags" else None

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ki_vla_eval_bag-") as tmp:
        if kind == "bags":
            root = convert_bags(inputs, Path(tmp) / "dataset", conversion, progress=not args.quiet)
        else:
            root = inputs[0]
        ds = LeRobotDataset(root)
        check_compatible(ds, cfg, str(args.model))
        chunks = ChunkDataset(ds, cfg.horizon, cfg.camera_names, (cfg.image_size, cfg.image_size),
                              resize_mode=cfg.image_resize)
        indices = select_frames(chunks, args.stride, args.max_frames)
        predictor = policy_predictor(policy, args.num_steps, args.seed)
        result = run_open_loop(chunks, predictor, indices, batch_size=args.batch_size, progress=not args.quiet)
        lengths = dict(zip(ds.episode_indices, ds.episode_lengths))
        summary = summarize(result, args.batch_size, ds.action_names, lengths)
        recorded = {e: ds.episode(i, decode_images=False)["action"] for i, e in enumerate(ds.episode_indices)
                    if e == int(result.episode[0])}
        info = {
            "ds_root": str(root) if kind == "dataset" else None,
            "episodes": ds.num_episodes,
            "frames": ds.num_frames,
            "fps": ds.fps,
            "tasks": ds.tasks,
        }
    wall = time.perf_counter() - started

    metrics = build_metrics(args, kind, inputs, info, policy, random_weights, device, torch.__version__, summary, wall)
    report = build_report(metrics, result, recorded, ds.action_names, ds.fps)
    report.write(report_dir, metrics)
    print_summary(metrics, report_dir)
    return 0


def build_metrics(args: argparse.Namespace, kind: str, inputs: list[Path], info: dict[str, Any], policy: Any,
                  random_weights: bool, device: str, torch_version: str, summary: dict[str, Any],
                  wall_s: float) -> dict[str, Any]:
    """metrics.json: the run's provenance (model, data, device, versions) beside every number."""
    cfg = policy.cfg
    names = summary["joint_names"]
    cons = summary["consistency"]
    per_joint = {
        name: {"mae": summary["per_joint_mae"][j], "mse": summary["per_joint_mse"][j],
               "consistency": cons["per_joint"][j],
               **({"hold_baseline_mae": summary["hold_baseline"]["per_joint_mae"][j]}
                  if "hold_baseline" in summary else {})}
        for j, name in enumerate(names)
    }
    lat = summary["latency_ms"]
    return {
        "command": "eval-bag",
        "model": str(args.model),
        "model_variant": cfg.variant,
        "random_weights": bool(random_weights),
        "normalization_stats": bool(policy.processor.has_data_stats),
        "input_kind": kind,
        "inputs": [str(p) for p in inputs],
        "dataset": info["ds_root"],
        "tasks": info["tasks"],
        "episodes": info["episodes"],
        "frames": info["frames"],
        "fps": info["fps"],
        "frames_evaluated": summary["frames_evaluated"],
        "episodes_evaluated": summary["episodes_evaluated"],
        "stride": args.stride,
        "max_frames": args.max_frames,
        "horizon": summary["horizon"],
        "action_dim": summary["action_dim"],
        "joint_names": names,
        "num_steps": args.num_steps or cfg.num_flow_steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": device,
        "torch_version": torch_version,
        "wall_time_s": wall_s,
        "mae": summary["mae"],
        "mse": summary["mse"],
        "mae_by_step": summary["mae_by_step"],
        "mse_by_step": summary["mse_by_step"],
        "valid_by_step": summary["valid_by_step"],
        "per_joint": per_joint,
        "consistency": {k: cons[k] for k in ("mean_abs_diff", "pairs", "overlap_steps")},
        "latency_ms": lat,
        "latency_ms_p50": lat["batch_ms"]["p50"],
        "latency_ms_p90": lat["batch_ms"]["p90"],
        "latency_ms_p99": lat["batch_ms"]["p99"],
        **({"hold_baseline": summary["hold_baseline"]} if "hold_baseline" in summary else {}),
        "per_episode": summary["per_episode"],
    }


def _weights_line(m: dict[str, Any]) -> str:
    if m["random_weights"]:
        return (f"Model `{m['model']}`: variant **{m['model_variant']}**, **random weights** (initialized from a "
                "model YAML; its actions are noise, these numbers only exercise the pipeline).")
    stats = "with" if m["normalization_stats"] else "without"
    return (f"Model `{m['model']}`: variant **{m['model_variant']}**, trained weights (checkpoint, {stats} dataset "
            "normalization stats).")


def _trajectory_segments(result: Any, episode: int, horizon: int) -> list[int]:
    """Rows of `result` to draw for one episode: chunks at least half a horizon apart, so they stay readable."""
    rows = [int(i) for i in np.flatnonzero(result.episode == episode)]
    rows.sort(key=lambda i: int(result.frame[i]))
    picked: list[int] = []
    for i in rows:
        if not picked or result.frame[i] - result.frame[picked[-1]] >= max(1, horizon // 2):
            picked.append(i)
    return picked[:MAX_TRAJECTORY_CHUNKS]


def build_report(m: dict[str, Any], result: Any, recorded: dict[int, np.ndarray], joint_names: list[str],
                 fps: float) -> Any:
    """report.md: a summary table, the three plots, per-joint and per-episode tables."""
    from ki_vla.eval.report import Report, bar_plot, line_plot, trajectory_plot

    r = Report("Open-loop evaluation (bag replay)")
    r.paragraph(_weights_line(m))
    if m["dataset"]:
        src = f"`{m['dataset']}`"
    else:
        src = ", ".join(f"`{p}`" for p in m["inputs"][:5]) + (" ..." if len(m["inputs"]) > 5 else "")
    every = "every frame" if m["stride"] == 1 else f"every {m['stride']} frames"
    r.paragraph(
        f"Data: {m['input_kind']} {src}: {m['episodes']} episodes, {m['frames']} frames at {m['fps']:g} Hz. "
        f"Evaluated {m['frames_evaluated']} frames of {m['episodes_evaluated']} episodes ({every}"
        f"{', at most ' + str(m['max_frames']) if m['max_frames'] else ''}); chunks of {m['horizon']} steps, "
        f"{m['num_steps']} flow steps, seed {m['seed']}, on {m['device']} (torch {m['torch_version']}). "
        "Errors are in the recorded action units (radians; gripper normalized)."
    )
    lat, cons, hold = m["latency_ms"], m["consistency"], m.get("hold_baseline")
    rows: list[list[Any]] = [
        ["MAE (all steps, all joints)", m["mae"], hold["mae"] if hold else None],
        ["MSE", m["mse"], hold["mse"] if hold else None],
        ["MAE at step 1", m["mae_by_step"][0], hold["mae_by_step"][0] if hold else None],
        [f"MAE at step {m['horizon']}", m["mae_by_step"][-1], hold["mae_by_step"][-1] if hold else None],
        [f"chunk-to-chunk disagreement (mean abs, {cons['pairs']} pairs)", cons["mean_abs_diff"], None],
        [f"latency per call, batch {lat['batch_size']}: p50 / p90 / p99 ms",
         " / ".join(f"{lat['batch_ms'][k]:.1f}" for k in ("p50", "p90", "p99")), None],
        ["latency per chunk (amortized): p50 ms", lat["per_chunk_ms"]["p50"], None],
    ]
    r.heading("Summary")
    r.table(["metric", "policy", "hold-still baseline"], rows)
    r.paragraph("The hold-still baseline predicts the current recorded joint state for the whole chunk: a policy "
                "that does not beat it has learned no motion. Latency covers preprocessing and sampling "
                "(not data loading).")

    steps = np.arange(1, m["horizon"] + 1)
    series = {"policy": m["mae_by_step"]}
    if hold:
        series["hold-still baseline"] = hold["mae_by_step"]
    r.heading("Error by horizon step")
    r.figure(line_plot(steps, series, title="MAE by horizon step", xlabel=f"horizon step (1/{fps:g} s)",
                       ylabel="MAE (mean over joints)"), "error_by_step.png", "MAE of predicted chunks by horizon step")

    r.heading("Per joint")
    bars = {"policy": [m["per_joint"][n]["mae"] for n in joint_names]}
    if hold:
        bars["hold-still baseline"] = [m["per_joint"][n]["hold_baseline_mae"] for n in joint_names]
    r.figure(bar_plot(joint_names, bars, title="MAE per joint (averaged over the chunk)", ylabel="MAE"),
             "per_joint_mae.png", "MAE per joint, averaged over the chunk")
    r.table(["joint", "MAE", "MSE", "chunk disagreement", "hold-still MAE"],
            [[n, v["mae"], v["mse"], v["consistency"], v.get("hold_baseline_mae")] for n, v in m["per_joint"].items()])

    episode = int(result.episode[0])
    actions = recorded[episode]
    spread = actions.std(axis=0)
    joints = sorted(np.argsort(-spread, kind="stable")[:MAX_TRAJECTORY_JOINTS].tolist())
    segments = []
    for i in _trajectory_segments(result, episode, m["horizon"]):
        valid = result.valid[i]
        t = (result.frame[i] + np.arange(m["horizon"]))[valid] / fps
        segments.append((t, result.pred[i][valid][:, joints]))
    r.heading("Predicted vs recorded")
    r.figure(trajectory_plot(np.arange(actions.shape[0]) / fps, actions[:, joints], segments,
                             [joint_names[j] for j in joints],
                             title=f"episode {episode}: recorded actions and predicted chunks"),
             "trajectories.png", f"Episode {episode}: recorded actions (black) and chunks predicted from a few frames "
                                 "(orange; dot = the frame the chunk was predicted from), the most-moving joints")

    r.heading("Per episode")
    r.table(["episode", "length", "frames evaluated", "MAE", "MSE", "MAE step 1", "chunk disagreement"],
            [[e["episode_index"], e.get("length"), e["frames_evaluated"], e["mae"], e["mse"], e["mae_step0"],
              e["consistency"]] for e in m["per_episode"]])
    return r


def print_summary(m: dict[str, Any], report_dir: Path) -> None:
    """A few lines for the terminal; the report has the rest."""
    lat, cons = m["latency_ms"], m["consistency"]
    weights = "RANDOM weights" if m["random_weights"] else "trained weights"
    print(f"eval-bag: {m['model']} ({m['model_variant']}, {weights}) on {m['frames_evaluated']} frames of "
          f"{m['episodes_evaluated']} episodes, device {m['device']}")
    hold = m.get("hold_baseline")
    base = f" (hold-still baseline {hold['mae']:.4g})" if hold else ""
    print(f"  MAE {m['mae']:.4g}{base}  MSE {m['mse']:.4g}  MAE step 1 -> {m['horizon']}: "
          f"{m['mae_by_step'][0]:.4g} -> {m['mae_by_step'][-1]:.4g}")
    dis = "n/a (stride >= horizon)" if not cons["pairs"] else f"{cons['mean_abs_diff']:.4g} over {cons['pairs']} pairs"
    print(f"  chunk disagreement {dis}")
    print(f"  latency p50/p90/p99 {lat['batch_ms']['p50']:.1f}/{lat['batch_ms']['p90']:.1f}/"
          f"{lat['batch_ms']['p99']:.1f} ms per call of batch {lat['batch_size']} "
          f"({lat['per_chunk_ms']['p50']:.1f} ms per chunk)")
    print(f"  report: {report_dir / 'report.md'}")
