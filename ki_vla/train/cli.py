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

"""`ki-vla train --config config/train/<name>.yaml key=value ...`

Multi-GPU: `torchrun --nproc_per_node=N -m ki_vla.train.cli --config ... distributed=ddp|fsdp`.
"""
from __future__ import annotations

import argparse
import logging
import sys

help = "train a KI policy on a LeRobot dataset (checkpoints, metrics.jsonl, TensorBoard, exact resume)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="train config YAML (config/train/tiny.yaml, smol.yaml, pi05.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print parameter counts and estimated memory, then exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config fields, e.g. dataset=data/cube output_dir=outputs/run max_steps=2000 "
                             "resume=true")


def run(args: argparse.Namespace) -> int:
    from ki_vla.train.config import TrainConfig

    cfg = TrainConfig.load(args.config, args.overrides)
    if args.dry_run:
        from ki_vla.train.memory import report

        print(report(cfg))
        return 0
    from ki_vla.train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        history = trainer.train()
    finally:
        trainer.env.shutdown()
    if trainer.env.is_main and trainer.preempted_at is not None:
        print(f"preempted (SIGTERM): checkpoint at step {trainer.preempted_at} in {trainer.out / 'checkpoints'}; "
              "the same command resumes (resume=true)")
        return 0
    if trainer.env.is_main and history:
        last = history[-1]
        print(f"trained to step {int(last['step'])}: loss {last['loss']:.4f} (ce {last['ce']:.4f}, "
              f"flow {last['flow']:.4f}); checkpoint {trainer.out / 'final'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for torchrun (`python -m ki_vla.train.cli`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="ki-vla train", description=help)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
