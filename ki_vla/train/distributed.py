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

"""torchrun integration: process group set-up and model wrapping (DDP or FSDP2's fully_shard).

Single-process runs (plain `ki-vla train`) go through the same code with world size 1 and no wrapping.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ki_vla.device import resolve_device


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistEnv":
        """Read torchrun's variables; initialize the process group when there are several processes."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        env = cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
        if env.enabled and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(env.local_rank)
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))
        return env

    def device(self, requested: str) -> torch.device:
        return resolve_device(requested, self.local_rank if self.enabled else None)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over processes (for logging only)."""
        if not self.enabled:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum of each value over processes (the step's global token counts)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def wrap_model(policy: nn.Module, env: DistEnv, strategy: str, device: torch.device) -> nn.Module:
    """DDP replicates the model; FSDP2 shards every decoder layer (backbone and expert) and the root."""
    if not env.enabled:
        return policy
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in (list(policy.backbone.language_model.layers)
                      + (list(policy.expert.layers) if policy.expert else [])):
            fully_shard(layer)
        fully_shard(policy)
        return policy
    from torch.nn.parallel import DistributedDataParallel

    # pi0 never reads the backbone's final hidden states (no CE), so the final norm gets no gradient.
    find_unused = not policy.cfg.trains_backbone_ce and policy.cfg.variant != "frozen"
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(policy, device_ids=ids, find_unused_parameters=find_unused)
