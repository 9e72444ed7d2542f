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

"""`ki-vla eval-sim --model M --task T --episodes N --report DIR`: closed loop through the real ROS 2 graph.

It starts the same graph a robot runs (`ki-vla-ros up --sim`: sim_node, camera_node, policy_node,
executor_node; one process each) plus `sim_evaluator`, which resets the sim per episode and measures. The
library never imports ROS: the graph is driven through its executables, and only the results file comes back.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from ki_vla import procs
from ki_vla.configs import load_yaml
from ki_vla.cli import parse_image_size
from ki_vla.procs import ros_env, write_ros_params
from ki_vla.eval.rollout import STRATEGIES
from ki_vla.joints import TRAJECTORY_TOPICS
from ki_vla.model.config import check_noise_scale

help = "closed-loop evaluation in the MuJoCo sim through the ROS 2 graph (success rate with 95% CI, videos, report)"

DEFAULT_CONFIG = "config/bimanual.yaml"


def _image_size(text: str) -> tuple[int, int]:
    h, w = parse_image_size(text)
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError("image size must be at least 8x8")
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ki_vla.sim.scenes import TASKS

    parser.add_argument("--model", required=True, help="checkpoint folder, or a model YAML (random weights)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--report", required=True, help="report folder to write (replaced if it holds a report)")
    parser.add_argument("--seed", type=int, default=1000,
                        help="first episode seed (default 1000: unseen by collect's 0..)")
    parser.add_argument("--mode", choices=("realtime", "lockstep"), default="realtime",
                        help="realtime: the sim runs at 50 Hz like a robot (latency matters); lockstep: the sim ticks "
                             "once per executor command (deterministic, as fast as the machine allows)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="sim seconds per episode (default: the task's length)")
    parser.add_argument("--videos", type=int, default=3, help="record the first N episodes as mp4")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="ROS parameter file of the graph")
    parser.add_argument("--device", default=None, help="policy device: auto | cpu | cuda")
    parser.add_argument("--sim-image-size", type=_image_size, default=(120, 160), metavar="HxW",
                        help="camera images the sim renders (default 120x160; the camera node resizes for the model)")
    parser.add_argument("--merger", choices=STRATEGIES, default=None,
                        help="the executor's merge strategy (default: the graph config's); rtc also turns on the "
                             "policy's real-time chunking (--rtc-beta, default 5)")
    parser.add_argument("--rtc-beta", type=float, default=None,
                        help="policy_node rtc_beta: guide chunks toward the executor's plan (paper 5, LeRobot 10; "
                             "0 = off)")
    parser.add_argument("--rtc-method", choices=("guided", "inpaint", "prefix"), default=None,
                        help="policy_node rtc_method (prefix: models trained with rtc_max_delay)")
    parser.add_argument("--inject-latency-ms", type=float, default=0.0,
                        help="added to every inference (policy_node inject_latency_ms): success under latency")
    parser.add_argument("--min-inference-period", type=float, default=None,
                        help="policy_node min_inference_period in seconds (default: the graph config's)")
    parser.add_argument("--noise-scale", type=float, default=None, metavar="S",
                        help="policy_node noise_scale: scale of the flow noise in [0, 1] (default: the checkpoint's)")
    parser.add_argument("--target", choices=("red", "blue"), default=None,
                        help="transfer_color: name this cube in every episode (default: drawn per seed); run both on "
                             "the same seeds to see whether the other instruction moves the other cube")
    parser.add_argument("--startup-timeout", type=float, default=240.0, help="wall seconds for the graph to come up")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _measured_commands(params: dict) -> tuple[str, str]:
    """The first controller's command topic and the interface on it, as the executor reads them (its own section
    over the shared one): the evaluator measures the control rate and jerk there."""
    ex = {**(params.get("/**") or {}).get("ros__parameters", {}), **params["executor_node"]["ros__parameters"]}
    topics = ex.get("command_topics") or list(TRAJECTORY_TOPICS)
    topic = str(topics[0])
    return (topic if topic.startswith("/") else f"/{topic}"), str(ex.get("command_interface", "trajectory"))


def _graph_params(args: argparse.Namespace, model: Path, pcfg) -> dict:
    from ki_vla.paths import resolve

    config = resolve(args.config)
    if not config.is_file():
        raise FileNotFoundError(f"graph config not found: {args.config}")
    params = load_yaml(config)
    if not isinstance(params, dict):
        raise ValueError(f"{config}: expected a mapping of node names")
    for node in ("camera_node", "policy_node", "executor_node", "sim_node"):
        if node not in params:
            raise ValueError(f"{config} has no {node} section")
    cams = list(pcfg.camera_names)
    sim = params["sim_node"]["ros__parameters"]
    sim.update(task=args.task, mode=args.mode, seed=args.seed, camera_names=cams, image_height=args.sim_image_size[0],
               image_width=args.sim_image_size[1], instruction_topic="/instruction", publish_clock=True,
               target=getattr(args, "target", None) or "")
    params["camera_node"]["ros__parameters"].update(camera_names=cams, image_size=pcfg.image_size,
                                                    resize_mode=pcfg.image_resize)
    pol = params["policy_node"]["ros__parameters"]
    pol["model"] = str(model)
    if getattr(args, "merger", None):
        params["executor_node"]["ros__parameters"]["merge_strategy"] = args.merger
    rtc_beta = getattr(args, "rtc_beta", None)
    if rtc_beta is None and getattr(args, "merger", None) == "rtc":
        rtc_beta = 5.0
    if rtc_beta is not None:
        if rtc_beta < 0:
            raise ValueError(f"--rtc-beta must be >= 0, got {rtc_beta}")
        pol["rtc_beta"] = float(rtc_beta)
    if getattr(args, "rtc_method", None):
        pol["rtc_method"] = args.rtc_method
    latency = float(getattr(args, "inject_latency_ms", 0.0) or 0.0)
    if not 0 <= latency <= 10000:
        raise ValueError(f"--inject-latency-ms must be in [0, 10000], got {latency}")
    pol["inject_latency_ms"] = latency
    if getattr(args, "noise_scale", None) is not None:
        pol["noise_scale"] = check_noise_scale(args.noise_scale)
    if getattr(args, "min_inference_period", None) is not None:
        pol["min_inference_period"] = float(args.min_inference_period)
    if args.device:
        pol["device"] = args.device
    return params


def evaluate(args: argparse.Namespace) -> dict:
    """Run the episodes and write the report; returns the metrics."""
    import torch

    from ki_vla.eval.closed_loop import EpisodeResult, summarize, write_report
    from ki_vla.eval.report import check_report_target
    from ki_vla.model.config import PolicyConfig
    from ki_vla.paths import resolve
    from ki_vla.joints import CONTROL_HZ
    from ki_vla.sim.scenes import TASK_SPECS

    if args.episodes < 1 or args.videos < 0:
        raise ValueError("--episodes must be >= 1 and --videos >= 0")
    if getattr(args, "target", None) and args.task != "transfer_color":
        raise ValueError("--target only applies to --task transfer_color")
    model = resolve(args.model)
    if model.is_dir():
        if not (model / "config.yaml").is_file():
            raise FileNotFoundError(f"{model} is not a ki_vla checkpoint (no config.yaml)")
        pcfg, weights = PolicyConfig.from_yaml(model / "config.yaml"), "trained weights"
    elif model.is_file():
        pcfg, weights = PolicyConfig.from_yaml(model), "RANDOM weights (a model YAML, not a checkpoint)"
    else:
        raise FileNotFoundError(f"model not found: {args.model}")
    report = Path(args.report)
    check_report_target(report)
    max_seconds = args.max_seconds or TASK_SPECS[args.task].episode_steps / CONTROL_HZ
    work = Path(tempfile.mkdtemp(prefix="ki_vla_eval_sim_"))
    params_file = work / "graph.yaml"
    params = _graph_params(args, model, pcfg)
    write_ros_params(params, params_file)
    command_topic, command_interface = _measured_commands(params)
    results_file = work / "results.json"
    env = ros_env()
    graph_log, eval_log = work / "graph.log", work / "evaluator.log"
    p = lambda k, v: ["-p", f"{k}:={v}"]  # noqa: E731
    eval_cmd = [sys.executable, "-m", "ki_vla_ros.sim_evaluator", "--ros-args", *p("use_sim_time", "true"),
                *p("episodes", args.episodes), *p("seed", args.seed), *p("max_seconds", float(max_seconds)),
                *p("output", str(results_file)), *p("videos", args.videos),
                *p("ready_timeout", float(args.startup_timeout)),
                *p("video_topic", f"/{pcfg.camera_names[0]}/image_raw"),
                *p("lockstep_kick", str(args.mode == "lockstep").lower()),
                *p("command_topic", command_topic), *p("command_interface", command_interface)]
    graph_cmd = [sys.executable, "-m", "ki_vla_ros.cli", "up", "--config", str(params_file), "--sim"]
    start = time.perf_counter()
    graph = procs.start(graph_cmd, graph_log, ros_env(images=False))   # `up` sets each node's transport
    evaluator = procs.start(eval_cmd, eval_log, env)
    budget = args.startup_timeout + args.episodes * (4.0 * max_seconds + 20.0)
    bar = tqdm(total=args.episodes, desc=f"eval-sim {args.task}", unit="ep", disable=args.quiet)
    try:
        while evaluator.poll() is None:
            if graph.poll() is not None:
                raise RuntimeError(f"the ROS graph exited early (code {graph.returncode}):\n"
                                   f"{procs.log_tail(graph_log)}")
            if time.perf_counter() - start > budget:
                raise RuntimeError(f"evaluation did not finish within {budget:.0f} s:\n{procs.log_tail(eval_log)}")
            if results_file.exists():
                done = len(json.loads(results_file.read_text())["results"])
                bar.update(done - bar.n)
            time.sleep(0.5)
    finally:
        bar.close()
        procs.stop(evaluator)
        procs.stop(graph)
    if not results_file.exists():
        raise RuntimeError(f"the evaluator wrote no results (exit {evaluator.returncode}):\n"
                           f"{procs.log_tail(eval_log)}\ngraph log:\n{procs.log_tail(graph_log)}")
    data = json.loads(results_file.read_text())
    if data["error"] or not data["complete"]:
        raise RuntimeError(f"evaluation incomplete: {data['error'] or 'evaluator stopped early'}\n"
                           f"{procs.log_tail(graph_log)}")
    results = [EpisodeResult(**r) for r in data["results"]]
    requested_noise = params["policy_node"]["ros__parameters"].get("noise_scale", -1.0)  # < 0: the checkpoint's
    meta = {"model": str(args.model), "weights": weights, "variant": pcfg.variant, "task": args.task, "mode": args.mode,
            "seed": args.seed, "max_seconds": max_seconds, "target": getattr(args, "target", None),
            "sim_image_size": list(args.sim_image_size),
            "device": args.device or "auto", "torch": torch.__version__, "wall_seconds": time.perf_counter() - start,
            "merge_strategy": params["executor_node"]["ros__parameters"]["merge_strategy"],
            "min_inference_period": params["policy_node"]["ros__parameters"]["min_inference_period"],
            "rtc_beta": params["policy_node"]["ros__parameters"].get("rtc_beta", 0.0),
            "inject_latency_ms": params["policy_node"]["ros__parameters"]["inject_latency_ms"],
            "noise_scale": requested_noise if requested_noise >= 0 else pcfg.noise_scale}
    metrics = summarize(results, meta)
    videos = {r.video: (work / r.video).read_bytes() for r in results if r.video and (work / r.video).exists()}
    write_report(str(report), metrics, videos, title=f"Closed-loop evaluation: {args.task}")
    return metrics


def run(args: argparse.Namespace) -> int:
    try:
        m = evaluate(args)
    except RuntimeError as exc:
        print(f"ki-vla eval-sim: {exc}", file=sys.stderr)
        return 1
    low, high = m["success_rate_ci95"]
    print(f"{m['task']}: success {m['successes']}/{m['episodes']} = {m['success_rate']:.2f} "
          f"(95% CI {low:.2f}-{high:.2f}), "
          f"latency p50 {m['latency_ms_p50']:.1f} ms, control {m['control_rate_hz']:.1f} Hz"
          + (f", wrong cube moved {m['wrong_cube_moved_rate']:.2f}"
             if m.get("wrong_cube_moved_rate") is not None else "")
          + f" -> {args.report}/report.md")
    return 0
