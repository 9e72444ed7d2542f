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

"""Scripted demonstrations -> LeRobot v3 dataset or rosbag2 recordings (the library behind `ki-vla collect`).

Only successful episodes are kept. Memory stays bounded whatever the image size: each attempt first
runs physics only (cheap) to learn whether the script succeeded; a kept episode is then replayed once
per camera, rendering that camera only, and its frames stream straight into the dataset writer's
encoder. Replays are exact because the sim is deterministic (checked: the replayed final state must
equal the first run's bit for bit). Bag mode (`collect_bags`) writes one rosbag2 per kept episode
with the robot's topics, recorded through the ROS graph (ki_vla_ros.scripted_recorder).
"""
from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ki_vla.atomic import publish_dir
from ki_vla.joints import CONTROL_HZ, JOINT_NAMES
from ki_vla.sim.scenes import DEFAULT_CAMERAS, DEFAULT_IMAGE_SIZE, TASKS, BimanualSim
from ki_vla.sim.scripted import ScriptedPolicy, run_scripted_episode


@dataclass(frozen=True)
class CollectConfig:
    """What `collect_dataset` produces. Seeds tried are seed, seed+1, ... up to max_attempts of them."""

    task: str
    episodes: int
    out: Path
    seed: int = 0
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    max_attempts: int | None = None  # default: 2 * episodes + 10
    target: str | None = None  # transfer_color only: fix the named cube instead of drawing it per seed
    use_videos: bool = True
    vcodec: str | None = None
    overwrite: bool = False
    episode_steps: int | None = None  # default: the task's (400 ticks = 8 s)
    bag_storage: str = "mcap"  # bag mode: mcap | sqlite3
    bag_camera_hz: float = 25.0  # bag mode: image rate (must divide 50 Hz)
    # Radians of smooth noise added to the executed arm commands, labels stay the plan (DART; see
    # ki_vla.sim.scripted.run_scripted_episode). 0: the plan is executed as is.
    action_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown sim task {self.task!r}; choose one of {list(TASKS)}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.max_attempts is not None and self.max_attempts < self.episodes:
            raise ValueError(f"max_attempts ({self.max_attempts}) must be >= episodes ({self.episodes})")
        if self.episode_steps is not None and self.episode_steps < 1:
            raise ValueError(f"episode_steps must be >= 1, got {self.episode_steps}")
        if not self.cameras:
            raise ValueError("need at least one camera")
        if not 0 <= self.action_noise <= 0.5:
            raise ValueError(f"action_noise must be in [0, 0.5] rad, got {self.action_noise}")
        object.__setattr__(self, "out", Path(self.out))

    @property
    def attempts_limit(self) -> int:
        return self.max_attempts if self.max_attempts is not None else 2 * self.episodes + 10


@dataclass
class CollectSummary:
    """What happened; `discarded` counts scripted attempts that failed and were not written."""

    out: Path
    task: str
    kept: int = 0
    discarded: int = 0
    kept_seeds: list[int] = field(default_factory=list)
    discarded_seeds: list[int] = field(default_factory=list)
    frames: int = 0
    wall_s: float = 0.0

    @property
    def attempts(self) -> int:
        return self.kept + self.discarded

    @property
    def scripted_success_rate(self) -> float:
        return self.kept / self.attempts if self.attempts else 0.0

    def as_dict(self) -> dict:
        return {"out": str(self.out), "task": self.task, "kept": self.kept, "discarded": self.discarded,
                "attempts": self.attempts, "scripted_success_rate": round(self.scripted_success_rate, 4),
                "kept_seeds": self.kept_seeds, "discarded_seeds": self.discarded_seeds,
                "frames": self.frames, "wall_s": round(self.wall_s, 2)}


def replay_frames(env: BimanualSim, actions: np.ndarray, seed: int, camera: str, target: str | None,
                  expect_final_state: np.ndarray) -> Iterator[np.ndarray]:
    """Frames of one camera along a recorded episode: frame t is the view before action t.

    Raises RuntimeError if the replay diverges from the recorded run (the sim must be deterministic).
    """
    env.reset(seed=seed, target=target, render=False)
    for t in range(len(actions)):
        yield env.render((camera,))[camera]
        env.step(actions[t], render=False)
    if not np.array_equal(env.state(), expect_final_state):
        raise RuntimeError(f"replay of seed {seed} diverged from the recorded episode; the sim is not deterministic")


def _successful_episodes(config: CollectConfig, env: BimanualSim, policy: ScriptedPolicy,
                         summary: CollectSummary, bar: Any) -> Iterator[dict]:
    """Scripted attempts from config.seed on; yields successful ones (the consumer writes each before
    asking for the next) and books failures. Raises RuntimeError when the attempt limit is hit."""
    steps = config.episode_steps or env.episode_steps
    seed = config.seed
    while summary.kept < config.episodes:
        if summary.attempts >= config.attempts_limit:
            raise RuntimeError(
                f"only {summary.kept}/{config.episodes} scripted {config.task} episodes succeeded in "
                f"{summary.attempts} attempts (seeds {config.seed}..{seed - 1}); nothing written")
        ep = run_scripted_episode(env, policy, seed, render=False, target=config.target, num_steps=steps,
                                  action_noise=config.action_noise)
        if ep["success"]:
            ep["final_state"] = env.state()
            yield ep
            summary.kept += 1
            summary.kept_seeds.append(seed)
            summary.frames += len(ep["actions"])
            bar.update(1)
        else:
            summary.discarded += 1
            summary.discarded_seeds.append(seed)
        bar.set_postfix(discarded=summary.discarded)
        seed += 1


def collect_dataset(config: CollectConfig, progress: bool = True) -> CollectSummary:
    """Run scripted episodes until `config.episodes` succeeded and write them as a LeRobot v3 dataset.

    Raises RuntimeError (and writes nothing) if fewer than `episodes` succeed within the attempt limit.
    """
    from ki_vla.data.lerobot import LeRobotDatasetWriter  # heavy imports (pyarrow, av) only when writing
    from tqdm import tqdm

    if config.out.exists() and not config.overwrite:
        raise ValueError(f"output dataset {config.out} already exists (use --overwrite to replace it)")
    env = BimanualSim(config.task, seed=config.seed, cameras=config.cameras, image_size=config.image_size)
    policy = ScriptedPolicy(config.task)
    summary = CollectSummary(out=config.out, task=config.task)
    t0 = time.perf_counter()
    h, w = config.image_size
    writer = LeRobotDatasetWriter.create(
        config.out, fps=int(CONTROL_HZ), camera_names=list(config.cameras), image_shape=(h, w, 3),
        state_names=list(JOINT_NAMES), action_names=list(JOINT_NAMES), robot_type="aloha",
        use_videos=config.use_videos, vcodec=config.vcodec, overwrite=config.overwrite)
    bar = tqdm(total=config.episodes, desc=f"collect {config.task}", unit="ep", disable=not progress)
    try:
        for ep in _successful_episodes(config, env, policy, summary, bar):
            images = {cam: replay_frames(env, ep["executed"], ep["seed"], cam, config.target, ep["final_state"])
                      for cam in config.cameras}
            writer.add_episode(images=images, state=ep["states"], action=ep["actions"], task=ep["instruction"])
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
        env.close()
    summary.wall_s = time.perf_counter() - t0
    return summary


def collect_bags(config: CollectConfig, progress: bool = True, timeout_per_episode: float = 120.0) -> CollectSummary:
    """Like `collect_dataset`, but `config.out` becomes a folder of rosbag2 recordings, one per kept episode
    (`episode_000000`, ...), recorded through the running ROS graph.

    Successful episodes are planned here without ROS; then sim_node (lockstep) and scripted_recorder
    (ki_vla_ros) replay them over DDS: the recorder publishes each episode's arm commands and records the
    robot's topics as they arrive, as `ros2 bag record` on a robot would. Written to a temp folder and
    renamed into place when every episode is recorded.
    """
    import sys
    import tempfile

    from tqdm import tqdm

    from ki_vla import procs

    if config.out.exists() and not config.overwrite:
        raise ValueError(f"output folder {config.out} already exists (use --overwrite to replace it)")
    if config.action_noise:
        raise ValueError("action_noise is for dataset collection (--out): bag mode replays the plan through ROS")
    env = BimanualSim(config.task, seed=config.seed, cameras=(), image_size=config.image_size)
    policy = ScriptedPolicy(config.task)
    summary = CollectSummary(out=config.out, task=config.task)
    t0 = time.perf_counter()
    with tqdm(total=config.episodes, desc=f"plan {config.task}", unit="ep", disable=not progress) as bar:
        try:
            episodes = [(ep["seed"], ep["actions"]) for ep in _successful_episodes(config, env, policy, summary, bar)]
        finally:
            env.close()
    work = Path(tempfile.mkdtemp(prefix="ki_vla_collect_"))
    np.savez(work / "episodes.npz", seeds=np.array([s for s, _ in episodes]),
             actions=np.stack([a for _, a in episodes]))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.out.parent / f".{config.out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    cams = list(config.cameras)
    sim_params = {"task": config.task, "seed": config.seed, "mode": "lockstep", "lockstep_on_command": True,
                  "camera_names": cams, "image_height": config.image_size[0], "image_width": config.image_size[1],
                  "camera_hz": config.bag_camera_hz, "instruction_topic": "/instruction", "publish_clock": True,
                  "idle_republish_period": 0.0,
                  "reset_settle": 0.0}  # the recorder plans from the post-reset state: its every command counts
    if config.target:
        sim_params["target"] = config.target
    rec_params = {"episodes_file": str(work / "episodes.npz"), "output": str(tmp), "storage": config.bag_storage,
                  "camera_names": cams, "use_sim_time": True}
    params = procs.write_ros_params({"sim_node": {"ros__parameters": sim_params},
                                     "scripted_recorder": {"ros__parameters": rec_params}}, work / "params.yaml")
    env_vars = procs.ros_env()
    ros = lambda name: [sys.executable, "-m", f"ki_vla_ros.{name}", "--ros-args",  # noqa: E731
                        "--params-file", str(params)]
    sim = procs.start(ros("sim_node"), work / "sim.log", env_vars)
    recorder = procs.start(ros("scripted_recorder"), work / "recorder.log", env_vars)
    try:
        try:
            code = recorder.wait(timeout=180.0 + timeout_per_episode * len(episodes))  # startup: see recorder
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"recording through ROS timed out:\n{procs.log_tail(work / 'recorder.log')}") from None
        if code != 0:
            raise RuntimeError(f"recording through ROS failed (exit {code}):\n{procs.log_tail(work / 'recorder.log')}\n"
                               f"sim_node:\n{procs.log_tail(work / 'sim.log')}")
        publish_dir(tmp, config.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        procs.stop(recorder)
        procs.stop(sim)
        shutil.rmtree(work, ignore_errors=True)
    summary.wall_s = time.perf_counter() - t0
    return summary
