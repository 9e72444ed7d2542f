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

"""`ki-vla info --model PATH`: what a model is made of (parameter counts per part) and how long it takes to load."""
from __future__ import annotations

import argparse
import dataclasses
import time

help = "print a model's layout: parameter counts (trainable / frozen) per part and load time"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder or model YAML (e.g. config/model/smol.yaml)")
    parser.add_argument("--variant", default=None,
                        help="override the config's variant (ki, joint, pi0, frozen, pi0_fast)")


def parameter_table(policy) -> list[tuple[str, int, int]]:
    """(part, trainable, frozen) rows; shared (tied) tensors are counted once."""
    parts = {"vision": [], "language model": [], "action expert": []}
    for name, p in policy.named_parameters():
        if name.startswith("backbone.language_model."):
            parts["language model"].append(p)
        elif name.startswith("backbone."):
            parts["vision"].append(p)
        else:
            parts["action expert"].append(p)
    return [(part, sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps if not p.requires_grad))
            for part, ps in parts.items() if ps]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ki_vla.model.config import PolicyConfig
    from ki_vla.model.policy import KIPolicy

    start = time.perf_counter()
    path = Path(args.model)
    if path.is_dir():
        policy = KIPolicy.from_pretrained(path, **({"variant": args.variant} if args.variant else {}))
    else:
        cfg = PolicyConfig.from_yaml(path)
        if args.variant:
            cfg = dataclasses.replace(cfg, variant=args.variant)
        policy = KIPolicy(cfg)
    elapsed = time.perf_counter() - start
    cfg = policy.cfg
    rows = parameter_table(policy)
    print(f"model {args.model}  variant={cfg.variant}  text={cfg.text.arch}  vision={cfg.vision.arch}  "
          f"pretrained={cfg.text.pretrained or 'none'}  loaded in {elapsed:.1f} s")
    print(f"prefix tokens: {cfg.num_image_tokens} image ({len(cfg.camera_names)} cameras) + {cfg.max_text_tokens} "
          f"text; chunk {cfg.horizon} x {cfg.action_dim} (padded to {cfg.max_action_dim})")
    print(f"{'part':<16}{'trainable':>14}{'frozen':>14}")
    for part, trainable, frozen in rows:
        print(f"{part:<16}{trainable:>14,}{frozen:>14,}")
    print(f"{'total':<16}{sum(r[1] for r in rows):>14,}{sum(r[2] for r in rows):>14,}")
    return 0
