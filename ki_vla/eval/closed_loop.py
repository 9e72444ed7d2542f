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

"""Closed-loop evaluation logic (no ROS): episode bookkeeping, success statistics and the report.

The ROS side (`ki_vla_ros/sim_evaluator.py`) feeds this with the sim's per-tick status, the policy's chunks
and the executor's commands; `ki-vla eval-sim` turns the collected results into metrics.json and report.md.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest

from ki_vla.eval.percentiles import percentile_summary


@dataclass
class EpisodeResult:
    index: int
    seed: int
    success: bool
    max_reward: float
    reward_fraction: float  # max_reward / the task's max reward
    duration_s: float  # sim time until success or timeout
    instruction: str
    chunks: int = 0
    latency_ms: list[float] = field(default_factory=list)  # observation stamp -> chunk received
    command_rate_hz: float = 0.0
    accepted_chunks: int = 0  # by the executor's safety checks, during the episode (from /diagnostics)
    rejected_chunks: int = 0
    video: str | None = None
    wrong_cube_moved: bool | None = None  # transfer_color: the cube the instruction does not name moved
    # rad, max over joints of |the executor's plan after - before| at each accepted chunk (the switch the robot feels,
    # from the executor's published plan); rad/s^3: mean |third difference| of the commanded positions / dt^3
    switch_jump_mean: float = 0.0
    switch_jump_max: float = 0.0
    jerk: float = 0.0


class EpisodeTracker:
    """Decides when the current episode is over from the sim's status messages.

    Statuses of earlier episodes can still be in flight after a reset, and the sim's own first episode may
    carry the same seed: an episode only begins with a status of its seed whose episode time is near zero
    (the reset happened), and only its statuses count after that. It ends at the first successful status, or
    when its sim time reaches `max_seconds`.
    """

    BEGIN_WINDOW_S = 0.5

    def __init__(self, episodes: int, seed: int, max_seconds: float) -> None:
        if episodes < 1 or max_seconds <= 0:
            raise ValueError("need episodes >= 1 and max_seconds > 0")
        self.episodes, self.first_seed, self.max_seconds = episodes, seed, max_seconds
        self.results: list[EpisodeResult] = []
        self.current: EpisodeResult | None = None
        self._begun = False

    @property
    def done(self) -> bool:
        return len(self.results) >= self.episodes

    @property
    def running(self) -> bool:
        """An episode has begun (its reset was seen) and has not ended."""
        return self.current is not None and self._begun

    def next_seed(self) -> int:
        return self.first_seed + len(self.results)

    def start(self) -> int:
        """Begin the next episode; returns the seed to reset the sim with."""
        if self.done:
            raise RuntimeError("all episodes are done")
        seed = self.next_seed()
        self.current = EpisodeResult(len(self.results), seed, False, 0.0, 0.0, 0.0, "")
        self._begun = False
        return seed

    def on_status(self, status: dict[str, Any]) -> EpisodeResult | None:
        """Feed one status; returns the finished episode's result when this status ends it."""
        ep = self.current
        if ep is None or int(status.get("seed", -1)) != ep.seed:
            return None
        if not self._begun:
            if float(status.get("episode_time", 1e9)) > self.BEGIN_WINDOW_S:
                return None  # a status from before our reset
            self._begun = True
        reward = float(status.get("reward", 0.0))
        max_reward = float(status.get("max_reward", 1.0)) or 1.0
        ep.max_reward = max(ep.max_reward, reward)
        ep.reward_fraction = ep.max_reward / max_reward
        ep.duration_s = float(status.get("episode_time", 0.0))
        ep.instruction = str(status.get("instruction", ""))
        if status.get("wrong_cube_moved") is not None:
            ep.wrong_cube_moved = bool(ep.wrong_cube_moved) or bool(status["wrong_cube_moved"])
        if bool(status.get("success")) or ep.duration_s >= self.max_seconds:
            ep.success = bool(status.get("success"))
            self.results.append(ep)
            self.current = None
            return ep
        return None


def success_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (scipy): honest at small n and at 0% or 100%, unlike the normal approximation."""
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def summarize(results: list[EpisodeResult], meta: dict[str, Any]) -> dict[str, Any]:
    """metrics.json content: success rate with its 95% interval, latency percentiles, control rate, episodes."""
    n = len(results)
    k = sum(r.success for r in results)
    low, high = success_interval(k, n)
    latencies = [x for r in results for x in r.latency_ms]
    lat = percentile_summary(latencies)
    rates = [r.command_rate_hz for r in results if r.command_rate_hz > 0]
    return {
        **meta,
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else math.nan,
        "success_rate_ci95": [low, high],
        "mean_reward_fraction": float(np.mean([r.reward_fraction for r in results])) if n else math.nan,
        "latency_ms_p50": lat["p50"], "latency_ms_p90": lat["p90"], "latency_ms_p99": lat["p99"],
        "control_rate_hz": float(np.mean(rates)) if rates else math.nan,
        "switch_jump_mean": float(np.mean([r.switch_jump_mean for r in results])) if n else math.nan,
        "switch_jump_max": float(max(r.switch_jump_max for r in results)) if n else math.nan,
        "jerk_mean": float(np.mean([r.jerk for r in results])) if n else math.nan,
        "executor_accepted_chunks": sum(r.accepted_chunks for r in results),
        "executor_rejected_chunks": sum(r.rejected_chunks for r in results),
        "wrong_cube_moved_rate": (float(np.mean([bool(r.wrong_cube_moved) for r in results]))
                                  if n and any(r.wrong_cube_moved is not None for r in results) else None),
        "per_episode": [{key: v for key, v in asdict(r).items() if key != "latency_ms"} for r in results],
    }


def write_report(path: str, metrics: dict[str, Any], videos: dict[str, bytes], title: str = "Closed-loop evaluation"):
    """report.md + metrics.json (+ the episode videos) in `path`, atomically (ki_vla.eval.report)."""
    from ki_vla.eval.report import Report, bar_plot, fmt

    rep = Report(title)
    low, high = metrics["success_rate_ci95"]
    rep.paragraph(f"Model `{metrics.get('model')}` ({metrics.get('weights', 'unknown weights')}), task "
                  f"`{metrics.get('task')}`, {metrics['episodes']} episodes from seed {metrics.get('seed')}, sim in "
                  f"{metrics.get('mode')} mode, through the ROS 2 graph (sim_node, camera_node, policy_node, "
                  "executor_node). "
                  "Latency is chunk receipt minus observation stamp on the sim clock (use_sim_time), so it comes in "
                  "steps of the 20 ms control tick.")
    rep.table(["metric", "value"], [
        ["success rate", f"{metrics['successes']}/{metrics['episodes']} = {fmt(metrics['success_rate'], 3)}"],
        ["95% interval (Wilson)", f"[{fmt(low, 3)}, {fmt(high, 3)}]"],
        ["mean max reward / task max", fmt(metrics["mean_reward_fraction"], 3)],
        ["observation-to-chunk latency p50 / p90 / p99 (ms)",
         f"{fmt(metrics['latency_ms_p50'], 4)} / {fmt(metrics['latency_ms_p90'], 4)} / "
         f"{fmt(metrics['latency_ms_p99'], 4)}"],
        ["executor command rate (Hz, sim time)", fmt(metrics["control_rate_hz"], 4)],
        ["merge strategy / RTC beta / injected latency (ms)",
         f"{metrics.get('merge_strategy')} / {metrics.get('rtc_beta', 0.0)} / {metrics.get('inject_latency_ms', 0.0)}"],
        ["chunk-switch jump mean / max (rad, executor plan)",
         f"{fmt(metrics.get('switch_jump_mean', math.nan), 3)} / {fmt(metrics.get('switch_jump_max', math.nan), 3)}"],
        ["command jerk (rad/s^3, mean |third difference| / dt^3)", fmt(metrics.get("jerk_mean", math.nan), 4)],
        ["chunks accepted / rejected by the executor's safety checks",
         f"{metrics['executor_accepted_chunks']} / {metrics['executor_rejected_chunks']}"],
    ] + ([["episodes that moved the cube the instruction does not name", fmt(metrics["wrong_cube_moved_rate"], 3)]]
         if metrics.get("wrong_cube_moved_rate") is not None else []))
    if metrics["executor_rejected_chunks"] > metrics["executor_accepted_chunks"]:
        rep.paragraph("Most chunks were rejected by the executor (jumps beyond its velocity bound, joints beyond "
                      "the URDF limits): the robot held still instead of following them. See the executor's "
                      "/diagnostics `rejected[...]` counts for the reasons.")
    per = metrics["per_episode"]
    rep.heading("Episodes")
    rep.table(["#", "seed", "instruction", "success", "max reward fraction", "sim seconds",
               "chunks (accepted/rejected)", "video"],
              [[p["index"], p["seed"], p["instruction"], p["success"], fmt(p["reward_fraction"], 3),
                fmt(p["duration_s"], 3),
                f"{p['chunks']} ({p['accepted_chunks']}/{p['rejected_chunks']})",
                f"[{p['video']}]({p['video']})" if p.get("video") else ""] for p in per])
    if per:
        rep.figure(bar_plot([str(p["seed"]) for p in per], {"max reward fraction": [p["reward_fraction"] for p in per]},
                            title="Progress per episode by seed (1.0 = success)", ylabel="fraction"),
                   "reward_per_episode.png", "How far each episode got (the task's reward stages).")
    for name, data in videos.items():
        rep.add_file(name, data)
    return rep.write(path, metrics)


# What each reward stage means (the sim's staged rewards, ACT's definitions), for reports written in words.
STAGE_NAMES = {
    "transfer_cube": ("touched the cube with the right gripper", "lifted it off the table",
                      "brought it into the left gripper", "completed the handover (left holds it in the air)"),
    "transfer_color": ("touched the named cube with the right gripper", "lifted it", "brought it into the left gripper",
                       "completed the handover with the other cube left alone"),
    "insertion": ("grasped both peg and socket", "lifted both", "brought the peg into the socket", "touched the pin"),
}


def describe_outcomes(rewards: list[int], task: str) -> str:
    """One paragraph from per-episode max reward stages: how far the policy gets, and where episodes stop."""
    names = STAGE_NAMES.get(task)
    n = len(rewards)
    if not names or n == 0:
        return ""
    reached = [sum(r >= k for r in rewards) for k in range(1, len(names) + 1)]
    parts = [f"{names[k]} in {reached[k]}/{n}" for k in range(len(names))]
    text = "Stage by stage, over all episodes, the policy " + "; ".join(parts) + "."
    stuck = [sum(r == k for r in rewards) for k in range(len(names))]  # episodes that ended at stage k (k < max)
    worst = max(range(len(stuck)), key=lambda k: stuck[k])
    if stuck[worst] and reached[-1] < n:
        where = "before the first stage (it never reached the object)" if worst == 0 else f"after it {names[worst - 1]}"
        text += f" Most failures ({stuck[worst]} of {n - reached[-1]}) stopped {where}."
    return text
