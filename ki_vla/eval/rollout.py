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

"""Closed-loop rollouts without ROS: the sim, the policy and the executor's own control logic in one process.

Why it exists beside `ki-vla eval-sim` (which runs the real ROS graph and is the number to report): measuring
a learning curve means evaluating many checkpoints on many seeds, and the ROS graph costs a full set of
processes, DDS and a render of every camera at every tick. Here each tick runs the same pieces a robot's graph
runs (`ChunkExecutor` with the configured merger, the URDF's limits and chunk checks, the camera node's resize)
but renders only at the ticks where the policy reads an observation, and several sims run in parallel worker
processes. Time is the sim clock: inference takes `latency_ticks` control ticks (0 = lockstep), during which the
executor keeps following the chunks it has; a chunk stamped with its observation time is then merged exactly as
the executor node merges it. Episodes are deterministic for a given seed and flow-noise seed.

Per episode it records success, the staged reward, and for transfer_color whether the *other* cube was moved
(language following: the wrong cube moving is the failure an instruction-blind policy makes half the time).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ki_vla.control.chunking import MERGERS

from ki_vla.joints import CONTROL_HZ, JOINT_NAMES
from ki_vla.model.config import check_noise_scale

STRATEGIES = tuple(MERGERS)   # the executor's merge strategies
# transfer_color: the other cube counts as moved when it left its start by more than this (metres, any axis).


@dataclass(frozen=True)
class RolloutConfig:
    """How the policy's chunks are executed: the executor's merger and how often the policy is asked.

    replan_every: ticks between observations the policy sees (the policy node runs back to back; at ~20 ms per
    chunk that is every tick or two in realtime). latency_ticks: ticks between an observation and its chunk
    becoming available (must be below replan_every + the horizon, or every chunk would arrive expired).
    """

    task: str = "transfer_cube"
    merge_strategy: str = "latest"
    replan_every: int = 10
    latency_ticks: int = 0
    ensembling_m: float = 0.01
    sim_image_size: tuple[int, int] = (120, 160)
    max_seconds: float | None = None  # default: the task's episode length
    urdf: str = "urdf/aloha_vx300s.urdf"
    target: str | None = None  # transfer_color: name this cube in every episode (default: drawn per seed)
    # The first chunk against the scripted plan of the same scene (privileged, sim only): predicted before the arm
    # moves, when only the images say where the objects are, so it measures the image pathway by itself.
    first_chunk_error: bool = True
    # Real-time chunking (ki_vla.infer.rtc): > 0 samples each chunk guided toward what the executor has committed
    # to (its plan from now on; the first `latency_ticks` actions are executed before the chunk lands), with this
    # guidance clip (beta). 0 = off. The first chunk, and any chunk asked while nothing covers now (start, a hold),
    # is sampled unguided: there is nothing committed to agree with.
    rtc_beta: float = 0.0
    rtc_schedule: str = "exp"
    rtc_method: str = "guided"   # guided | inpaint | prefix (ki_vla.infer.rtc)
    # flow-noise scale of the sampled chunks (PolicyConfig.noise_scale); None: the checkpoint's
    noise_scale: float | None = None

    def __post_init__(self) -> None:
        from ki_vla.sim.scenes import TASKS

        if self.task not in TASKS:
            raise ValueError(f"unknown sim task {self.task!r}; choose one of {list(TASKS)}")
        if self.merge_strategy not in STRATEGIES:
            raise ValueError(f"merge_strategy must be one of {STRATEGIES}, got {self.merge_strategy!r}")
        if self.replan_every < 1 or self.latency_ticks < 0:
            raise ValueError("replan_every must be >= 1 and latency_ticks >= 0")
        if self.rtc_beta < 0:
            raise ValueError(f"rtc_beta must be >= 0 (0 = off), got {self.rtc_beta}")
        if self.noise_scale is not None:
            check_noise_scale(self.noise_scale)
        if self.target is not None and self.task != "transfer_color":
            raise ValueError("target is only meaningful for transfer_color")
        object.__setattr__(self, "sim_image_size", tuple(int(v) for v in self.sim_image_size))


@dataclass
class RolloutResult:
    seed: int
    success: bool
    max_reward: int
    reward_fraction: float
    duration_s: float
    instruction: str
    target: str | None = None
    wrong_cube_moved: bool = False
    chunks: int = 0
    rejected_chunks: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # ChunkRejected.reason -> count
    last_rejection: str = ""
    held_ticks: int = 0
    reward_curve: list[int] = field(default_factory=list)  # staged reward every 10 ticks
    # rad: mean over joints of the max |chunk - scripted plan| over the chunk; the chunk is a probe at the first
    # observation sampled from the same flow noise in every episode, so across episodes only the scene differs.
    first_chunk_error: float | None = None
    first_chunk_end: list[float] | None = None  # the probe's last point and the plan's (scene dependence)
    plan_end: list[float] | None = None
    # rad: max over joints of |merged target after - before| at each accepted chunk (the switch the robot feels)
    switch_jumps: list[float] = field(default_factory=list)
    jerk: float = 0.0   # rad/s^3: mean over ticks and joints of |third difference of the commands| / dt^3


def run_episode(policy: Any, sim: Any, cfg: RolloutConfig, seed: int, limits: Any,
                generator: Any | None = None) -> RolloutResult:
    """One episode of `sim` (a BimanualSim configured with the policy's cameras) driven by `policy.predict`."""
    from ki_vla.control.chunking import ChunkExecutor, make_merger
    from ki_vla.control.safety import ChunkRejected, path_tolerances
    from ki_vla.observation import Observation

    dt = 1.0 / CONTROL_HZ
    obs = sim.reset(seed=seed, target=cfg.target, render=False)
    # The executor node's defaults (path tolerance included), so the ROS-free numbers hold for the graph.
    executor = ChunkExecutor(make_merger(cfg.merge_strategy, cfg.ensembling_m), limits, dt,
                             path_tolerance=path_tolerances(limits.names))
    max_ticks = int(round((cfg.max_seconds or sim.episode_steps * dt) / dt))
    cams = tuple(policy.cfg.camera_names)
    pending: list[tuple[int, float, np.ndarray]] = []  # (tick it arrives, observation stamp, chunk)
    commands: list[np.ndarray] = []
    result = RolloutResult(seed=seed, success=False, max_reward=0, reward_fraction=0.0, duration_s=0.0,
                           instruction=sim.instruction, target=sim.target)
    for tick in range(max_ticks):
        now = tick * dt
        state = obs["state"]
        executor.on_state(state, now)
        if tick % cfg.replan_every == 0:
            images = sim.render(cams)
            guide = _rtc_guide(executor, cfg, now, dt, policy.cfg.horizon) if cfg.rtc_beta > 0 else None
            chunk = policy.predict(Observation(images=images, state=state, instruction=sim.instruction, stamp=now),
                                   generator=generator, **({"guide": guide} if guide is not None else {}))
            pending.append((tick + cfg.latency_ticks, now, chunk))
            if tick == 0 and cfg.first_chunk_error:
                import torch

                from ki_vla.sim.scripted import ScriptedPolicy

                # The probe is sampled from the same flow noise in every episode: with per-seed noise, the spread
                # across scenes was mostly sampling noise (measured on transfer_color: the noise-averaged first
                # chunk moved 0.005-0.015 rad across 12 scenes, the per-seed samples 0.05-0.17 rad).
                probe = policy.predict(Observation(images=images, state=state, instruction=sim.instruction, stamp=now),
                                       generator=torch.Generator().manual_seed(0))
                plan = ScriptedPolicy(sim.config.task).plan(sim, len(probe))  # the sim is still at its reset state
                result.first_chunk_error = float(np.abs(probe - plan).max(axis=0).mean())
                result.first_chunk_end, result.plan_end = probe[-1].tolist(), plan[-1].tolist()
        for item in [p for p in pending if p[0] <= tick]:
            pending.remove(item)
            _, stamp, chunk = item
            before = executor.merger.sample(now)
            try:
                executor.on_chunk(JOINT_NAMES, np.arange(len(chunk)) * dt, chunk, stamp=stamp, now=now)
                result.chunks += 1
                after = executor.merger.sample(now)
                if before is not None and after is not None:
                    result.switch_jumps.append(float(np.abs(after - before).max()))
            except ChunkRejected as exc:
                result.rejected_chunks += 1
                result.rejected_by_reason[exc.reason] = result.rejected_by_reason.get(exc.reason, 0) + 1
                result.last_rejection = str(exc)
        command = executor.tick(now)
        target = state if command is None else command.positions[0]
        commands.append(np.asarray(target, dtype=np.float64))
        result.held_ticks += int(command is None or command.holding)
        obs = sim.step(target, render=False)
        reward = sim.reward()
        result.max_reward = max(result.max_reward, reward)
        if tick % 10 == 0:
            result.reward_curve.append(int(reward))
        if reward == sim.max_reward:
            result.success = True
            result.duration_s = (tick + 1) * dt
            break
    else:
        result.duration_s = max_ticks * dt
    if len(commands) >= 4:
        result.jerk = float(np.abs(np.diff(np.asarray(commands), n=3, axis=0)).mean() / dt ** 3)
    result.reward_fraction = result.max_reward / sim.max_reward
    result.wrong_cube_moved = bool(sim.wrong_cube_moved())
    return result


# ---- parallel workers: one policy and one sim per process ----------------------------------------------------
_WORKER: dict[str, Any] = {}


def _rtc_guide(executor: Any, cfg: RolloutConfig, now: float, dt: float, horizon: int) -> Any | None:
    """The RTC guide for a chunk asked at `now`: the executor's committed plan from now on (None when nothing
    covers now: the first chunk after start or a hold is sampled freely and the executor's ramp takes it in)."""
    from ki_vla.infer.rtc import RTCGuide

    plan = executor.merger.plan(now, horizon, dt)
    if plan is None or executor.holding:
        return None
    delay = min(cfg.latency_ticks, horizon)
    return RTCGuide(plan, delay=delay, exec_horizon=min(cfg.replan_every, horizon - delay), beta=cfg.rtc_beta,
                    schedule=cfg.rtc_schedule, method=cfg.rtc_method)


def _worker_init(model: str, cfg: RolloutConfig, threads: int, device: str) -> None:
    import torch

    from ki_vla.infer.engine import make_predictor
    from ki_vla.control.safety import JointLimits
    from ki_vla.model.policy import KIPolicy
    from ki_vla.paths import resolve
    from ki_vla.sim.scenes import BimanualSim

    torch.set_num_threads(threads)
    try:
        reference = KIPolicy.load(model, device=device)
        if cfg.noise_scale is not None:
            reference.set_noise_scale(cfg.noise_scale)
        policy = make_predictor(reference)   # what policy_node serves: the engine
        _WORKER.update(
            policy=policy, cfg=cfg,
            sim=BimanualSim(cfg.task, cameras=tuple(policy.cfg.camera_names), image_size=cfg.sim_image_size),
            limits=JointLimits.from_urdf(resolve(cfg.urdf), JOINT_NAMES))
    except Exception as exc:  # noqa: BLE001 - an initializer that raises makes Pool respawn it forever: report instead
        _WORKER["error"] = (f"{exc}" if isinstance(exc, (ValueError, FileNotFoundError))
                            else f"{type(exc).__name__}: {exc}")


def _worker_episode(seed: int) -> dict:
    import torch

    if "error" in _WORKER:
        raise ValueError(f"a rollout worker could not start: {_WORKER['error']}")

    gen = torch.Generator().manual_seed(int(seed))  # flow noise per seed: results do not depend on worker count
    with torch.no_grad():
        res = run_episode(_WORKER["policy"], _WORKER["sim"], _WORKER["cfg"], int(seed), _WORKER["limits"], gen)
    return asdict(res)


def evaluate(model: str | Path, cfg: RolloutConfig, seeds: list[int], workers: int = 2, device: str = "cpu",
             progress: bool = True) -> list[RolloutResult]:
    """Episodes for `seeds` in `workers` processes (each with its own policy copy and sim); ordered by seed."""
    from tqdm import tqdm

    if not seeds:
        raise ValueError("no seeds to evaluate")
    workers = max(1, min(int(workers), len(seeds)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")  # MuJoCo GL contexts and torch threads do not survive fork
    out: dict[int, RolloutResult] = {}
    with ctx.Pool(workers, initializer=_worker_init, initargs=(str(model), cfg, threads, device)) as pool, \
            tqdm(total=len(seeds), desc=f"rollout {cfg.task}", unit="ep", disable=not progress) as bar:
        for row in pool.imap_unordered(_worker_episode, seeds):
            out[row["seed"]] = RolloutResult(**row)
            bar.update(1)
            bar.set_postfix(success=sum(r.success for r in out.values()))
    return [out[s] for s in seeds]


def summarize(results: list[RolloutResult]) -> dict[str, Any]:
    """Success rate with its 95% Wilson interval, mean reward fraction, wrong-cube rate."""
    from ki_vla.eval.closed_loop import success_interval

    n = len(results)
    k = sum(r.success for r in results)
    low, high = success_interval(k, n) if n else (0.0, 1.0)
    return {"episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "success_rate_ci95": [low, high],
            "mean_reward_fraction": float(np.mean([r.reward_fraction for r in results])) if n else 0.0,
            "reward_histogram": {str(v): sum(r.max_reward == v for r in results) for v in range(5)},
            "wrong_cube_moved_rate": float(np.mean([r.wrong_cube_moved for r in results])) if n else 0.0,
            "rejected_chunks": int(sum(r.rejected_chunks for r in results)),
            "first_chunk_error": float(np.mean(fce)) if (fce := [r.first_chunk_error for r in results
                                                                 if r.first_chunk_error is not None]) else None,
            **scene_dependence(results),
            "rejected_by_reason": {k: int(sum(r.rejected_by_reason.get(k, 0) for r in results))
                                   for k in sorted({k for r in results for k in r.rejected_by_reason})},
            "held_tick_fraction": float(np.mean([r.held_ticks / max(1.0, r.duration_s * CONTROL_HZ) for r in results]))
            if n else 0.0,
            "switch_jump_mean": (float(np.mean(jumps)) if (jumps := [j for r in results for j in r.switch_jumps])
                                 else None),
            "switch_jump_max": float(np.max(jumps)) if jumps else None,
            "jerk_mean": float(np.mean([r.jerk for r in results])) if n else 0.0}


def scene_dependence(results: list[RolloutResult], min_spread: float = 1e-2) -> dict[str, float | None]:
    """Does the first chunk change with the scene the way the scripted plan does? Across episodes, per joint whose
    planned end point varies (std > min_spread rad): the predicted end point's spread relative to the plan's, and
    their correlation; averaged over those joints. A policy that ignores its cameras scores spread 0 (it predicts
    the same reach in every scene, measured on the CPU recipe before images were learned); one that reads the
    scene scores spread ~1 and correlation ~1. None with fewer than 3 episodes."""
    pairs = [(r.first_chunk_end, r.plan_end) for r in results if r.first_chunk_end is not None]
    if len(pairs) < 3:
        return {"first_chunk_scene_spread": None, "first_chunk_scene_corr": None}
    pred, plan = (np.asarray(x, dtype=np.float64) for x in zip(*pairs))
    varying = plan.std(axis=0) > min_spread
    if not varying.any():
        return {"first_chunk_scene_spread": None, "first_chunk_scene_corr": None}
    pred, plan = pred[:, varying], plan[:, varying]
    spread = pred.std(axis=0) / plan.std(axis=0)
    pc, qc = pred - pred.mean(0), plan - plan.mean(0)
    corr = (pc * qc).sum(0) / np.sqrt((pc ** 2).sum(0) * (qc ** 2).sum(0)).clip(min=1e-12)
    return {"first_chunk_scene_spread": float(spread.mean()), "first_chunk_scene_corr": float(corr.mean())}
