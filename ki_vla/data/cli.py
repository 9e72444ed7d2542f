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

"""`ki-vla convert-bag BAG [BAG ...] --out DATASET [--config YAML]`: rosbag2 recordings -> LeRobot v3.0 dataset.

One bag (a rosbag2 folder with metadata.yaml and .mcap or .db3 storage) per episode. Options given on the
command line override the YAML config (see `ki_vla.data.bag.BagConversionConfig` for its keys).
"""
from __future__ import annotations

import argparse
import dataclasses

from ki_vla.cli import parse_image_size
from ki_vla.data.bag import BagConversionConfig, convert_bags
from ki_vla.data.lerobot import LeRobotDataset

help = "convert rosbag2 recordings (mcap or sqlite3; one per episode) into a LeRobot v3.0 dataset"


def _camera(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"camera must be NAME=TOPIC, got {text!r}")
    name, topic = text.split("=", 1)
    return name.strip(), topic.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the subcommand's arguments."""
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="rosbag2 folders (or bare .mcap files), one episode each")
    parser.add_argument("--out", required=True, metavar="DATASET", help="output dataset folder (must not exist)")
    parser.add_argument("--config", metavar="YAML", help="conversion config (topics, fps, cameras, image size)")
    parser.add_argument("--fps", type=int, help="control rate to resample to (default 50)")
    parser.add_argument("--image-size", type=parse_image_size, metavar="HxW", help="resize images, e.g. 240x320")
    parser.add_argument(
        "--camera", type=_camera, action="append", metavar="NAME=TOPIC",
        help="camera topic (repeat; replaces the config's)"
    )
    parser.add_argument("--task", help="instruction for every episode (instead of the /instruction topic)")
    parser.add_argument("--vcodec", help="video codec: av1, h264 or mpeg4 (default: av1 when available)")
    parser.add_argument("--no-videos", action="store_true", help="store images as PNG columns instead of mp4")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> BagConversionConfig:
    """The YAML config (or defaults) with the command-line overrides applied."""
    config = BagConversionConfig.from_yaml(args.config) if args.config else BagConversionConfig()
    overrides: dict[str, object] = {}
    if args.fps is not None:
        overrides["fps"] = args.fps
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.camera:
        overrides["cameras"] = dict(args.camera)
    if args.task is not None:
        overrides["task"] = args.task
    if args.vcodec is not None:
        overrides["vcodec"] = args.vcodec
    if args.no_videos:
        overrides["use_videos"] = False
    return dataclasses.replace(config, **overrides) if overrides else config


def run(args: argparse.Namespace) -> int:
    """Convert; a bad bag raises BagConversionError (a ValueError), which `ki-vla` prints as one line."""
    config = config_from_args(args)
    out = convert_bags(args.bags, args.out, config, overwrite=args.overwrite, progress=not args.quiet)
    ds = LeRobotDataset(out)
    print(
        f"wrote {out}: {ds.num_episodes} episodes, {ds.num_frames} frames at {ds.fps:g} Hz, "
        f"cameras {ds.camera_names}, tasks {ds.tasks}"
    )
    return 0
