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

"""`ki-vla collect`: scripted MuJoCo demonstrations written as a LeRobot v3 dataset."""
from __future__ import annotations

import argparse
import json
import sys

from ki_vla.cli import parse_image_size
from ki_vla.sim.collect import CollectConfig, collect_bags, collect_dataset
from ki_vla.sim.scenes import DEFAULT_CAMERAS, DEFAULT_IMAGE_SIZE, TASKS

help = ("Collect scripted demonstrations in the MuJoCo bimanual sim into a LeRobot v3 dataset (--out) "
        "or rosbag2 recordings with the robot's topics (--bag).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=TASKS, help="sim task")
    parser.add_argument("--episodes", type=int, required=True, help="successful episodes to write")
    dest = parser.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="dataset directory to create (LeRobot v3 layout)")
    dest.add_argument("--bag", help="folder to create with one rosbag2 per episode (episode_000000, ...)")
    parser.add_argument("--seed", type=int, default=0, help="first episode seed; later attempts use seed+1, ...")
    parser.add_argument("--image-size", type=parse_image_size, default=DEFAULT_IMAGE_SIZE, metavar="HxW",
                        help=f"camera image size (default {DEFAULT_IMAGE_SIZE[0]}x{DEFAULT_IMAGE_SIZE[1]})")
    parser.add_argument("--cameras", default=",".join(DEFAULT_CAMERAS),
                        help="comma-separated camera names (default %(default)s)")
    parser.add_argument("--max-attempts", type=int, default=None,
                        help="give up after this many scripted attempts (default 2*episodes+10)")
    parser.add_argument("--episode-steps", type=int, default=None, help="control ticks per episode (default: task's)")
    parser.add_argument("--target", choices=("red", "blue"), default=None,
                        help="transfer_color: always name this cube (default: drawn per seed)")
    parser.add_argument("--no-video", action="store_true", help="store frames as PNG in parquet instead of mp4")
    parser.add_argument("--vcodec", default=None, help="video codec: av1 | h264 | mpeg4 (default: best available)")
    parser.add_argument("--bag-storage", choices=("mcap", "sqlite3"), default="mcap", help="bag mode: rosbag2 storage")
    parser.add_argument("--camera-hz", type=float, default=25.0, help="bag mode: image rate, divides 50 (default 25)")
    parser.add_argument("--action-noise", type=float, default=0.0, metavar="RAD",
                        help="smooth noise (std, radians) on the executed arm commands while the recorded actions stay "
                             "the plan (DART): the policy learns to return to the path (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cameras = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    if args.target is not None and args.task != "transfer_color":
        raise ValueError("--target only applies to --task transfer_color")
    config = CollectConfig(task=args.task, episodes=args.episodes, out=args.bag or args.out, seed=args.seed,
                           image_size=tuple(args.image_size), cameras=cameras, max_attempts=args.max_attempts,
                           target=args.target, use_videos=not args.no_video, vcodec=args.vcodec,
                           overwrite=args.overwrite, episode_steps=args.episode_steps, action_noise=args.action_noise,
                           bag_storage=args.bag_storage, bag_camera_hz=args.camera_hz)
    collect = collect_bags if args.bag else collect_dataset
    try:
        summary = collect(config, progress=not args.no_progress)
    except RuntimeError as exc:
        print(f"ki-vla collect: {exc}", file=sys.stderr)
        return 1
    s = summary.as_dict()
    print(f"wrote {s['kept']} episodes ({s['frames']} frames) to {s['out']} in {s['wall_s']} s; "
          f"discarded {s['discarded']} failed attempts (scripted success {s['scripted_success_rate']:.0%})")
    print(json.dumps(s))
    return 0
