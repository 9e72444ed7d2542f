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

"""One rule for the `--device` / `device:` value every command and node takes.

"auto" is CUDA when torch sees a GPU, else the CPU; an explicit CUDA device that this machine lacks is refused
with one clear line (rather than a CUDA error deep inside the first kernel). Under torchrun a bare "cuda" means
this process's own GPU (LOCAL_RANK).
"""
from __future__ import annotations

import torch


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    text = str(name).strip()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" and local_rank is not None:
        text = f"cuda:{local_rank}"
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise ValueError(f"device {text!r}: expected auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {text!r} requested but no CUDA device is available (torch {torch.__version__})")
    return device
