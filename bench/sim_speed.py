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

"""Sim throughput: control ticks per second with and without rendering the cameras.

    MUJOCO_GL=egl python bench/sim_speed.py [--task transfer_cube] [--steps 400] [--image-size 240x320]
                                            [--json FILE]

Each tick is one 50 Hz control step (10 physics substeps). The scripted policy's own commands are
replayed so contacts happen as in a real episode. Rows: physics only, physics + each camera alone,
physics + all configured cameras. "realtime_x" is how many times faster than the robot's 50 Hz.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ki_vla.joints import CONTROL_HZ  # noqa: E402
from ki_vla.sim.cli import parse_image_size  # noqa: E402
from ki_vla.sim.scenes import DEFAULT_CAMERAS, DEFAULT_IMAGE_SIZE, TASKS, BimanualSim  # noqa: E402
from ki_vla.sim.scripted import ScriptedPolicy  # noqa: E402


def measure(env: BimanualSim, actions, cameras: tuple[str, ...], steps: int) -> float:
    """Ticks per second over `steps` ticks (after a short warm-up that also creates the GL context)."""
    env.reset(seed=0, render=False)
    if cameras:
        env.render(cameras)
    t0 = time.perf_counter()
    for t in range(steps):
        env.step(actions[t % len(actions)], render=False)
        if cameras:
            env.render(cameras)
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="transfer_cube")
    p.add_argument("--steps", type=int, default=400, help="ticks per row (400 = one episode)")
    p.add_argument("--image-size", type=parse_image_size, default=DEFAULT_IMAGE_SIZE, metavar="HxW")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")

    env = BimanualSim(args.task, seed=0, cameras=DEFAULT_CAMERAS, image_size=args.image_size)
    actions = ScriptedPolicy(args.task).plan(env)
    rows = [("physics only", ())] + [(f"+ {c}", (c,)) for c in DEFAULT_CAMERAS] + \
           [(f"+ {len(DEFAULT_CAMERAS)} cameras", DEFAULT_CAMERAS)]
    results = []
    for label, cams in rows:
        rate = measure(env, actions, cams, args.steps)
        results.append({"config": label, "cameras": list(cams), "steps_per_s": round(rate, 1),
                        "ms_per_step": round(1000.0 / rate, 3), "realtime_x": round(rate / CONTROL_HZ, 2)})
    env.close()

    h, w = args.image_size
    print(f"task {args.task}, {args.steps} ticks, images {h}x{w}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'config':<22}{'steps/s':>10}{'ms/step':>10}{'x realtime':>12}")
    for r in results:
        print(f"{r['config']:<22}{r['steps_per_s']:>10.1f}{r['ms_per_step']:>10.2f}{r['realtime_x']:>12.2f}")
    if args.json:
        payload = {"task": args.task, "steps": args.steps, "image_size": [h, w],
                   "mujoco_gl": os.environ.get("MUJOCO_GL"), "cpus": os.cpu_count(),
                   "machine": platform.machine(), "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
