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

"""Run under torchrun by test_train.py: co-training under DDP with action-free micro-batches.

Trains a few steps, then every rank reports a checksum of its weights and the episode/VLM mix it read; rank 0
writes them to the JSON file named by argv[1]. (Not a test module itself: pytest collects test_*.py only.)
"""
import json
import sys

import torch
import torch.distributed as dist

from ki_vla.train.config import TrainConfig
from ki_vla.train.trainer import Trainer

out_file, overrides = sys.argv[1], sys.argv[2:]
trainer = Trainer(TrainConfig.load(None, overrides))
rank, world = trainer.env.rank, trainer.env.world_size
kinds = []  # per step: did this rank's micro-batch hold any robot sample?
for step in range(trainer.cfg.max_steps):
    samples = [trainer.dataset[i] for i in trainer.schedule.indices(step, rank, 0)]
    kinds.append(any(not s.get("is_vlm", False) for s in samples))
trainer.train()
flat = torch.cat([p.detach().flatten() for p in trainer.policy.parameters()])
mine = torch.tensor([float(flat.double().sum()), float(flat.double().abs().sum())], dtype=torch.float64)
gathered = [torch.zeros_like(mine) for _ in range(world)]
dist.all_gather(gathered, mine)
all_kinds = [None] * world
dist.all_gather_object(all_kinds, kinds)
if rank == 0:
    with open(out_file, "w") as f:
        json.dump({"checksums": [g.tolist() for g in gathered], "has_robot": all_kinds}, f)
