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

"""Will the engine's stages capture as CUDA graphs? A check that needs no GPU.

A CUDA graph capture fails on a host synchronization (`.item()`, `if tensor:`, data-dependent shapes such as
boolean-mask indexing or `nonzero`) and on a host-to-device copy of a tensor made on the CPU inside the captured
region. Both show up when the stages run on the meta device (tensors with shapes and no data): a sync raises, and
a CPU tensor meeting device tensors is visible to a dispatch mode. This is how we found that transformers'
Idefics3 vision forward syncs (it builds its patch mask on the CPU and calls `mask.all()`) without a GPU at hand.
0-dim CPU tensors are allowed: kernels take them by value, with no copy.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ki_vla.model.config import PolicyConfig


class _HostTensorGuard(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in tree_flatten((args, kwargs))[0]:
            if isinstance(a, torch.Tensor) and a.device.type != "meta" and a.dim() > 0:
                self.found.append(f"{func} reads a {a.device.type} tensor of shape {tuple(a.shape)}")
        return func(*args, **kwargs)


def capture_problems(cfg: PolicyConfig, batch_size: int = 1) -> dict[str, str | None]:
    """Run each engine stage for `cfg` on the meta device; {stage: None if capturable, else what breaks it}."""
    from ki_vla.infer.engine import STAGES, InferenceEngine
    from ki_vla.model.policy import KIPolicy

    cfg = dataclasses.replace(cfg, dtype="float32", text=dataclasses.replace(cfg.text, pretrained=None,
                                                                             tokenizer="bytes-benchmark"))
    with torch.device("meta"):
        policy = KIPolicy(cfg)
    engine = InferenceEngine(policy, batch_size=batch_size, device="meta", fuse=False)
    result: dict[str, str | None] = {}
    for name in STAGES:
        guard = _HostTensorGuard()
        try:
            with guard:
                engine.run_stage(name)
            result[name] = "; ".join(dict.fromkeys(guard.found)) or None
        except (RuntimeError, NotImplementedError) as exc:  # meta tensors raise on any read of their data
            result[name] = f"host sync or data-dependent shape: {exc}"
    return result
