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

"""ki_vla.device.resolve_device: the one rule behind every --device / device: value."""
import pytest
import torch

from ki_vla.device import resolve_device


def test_auto_follows_what_torch_sees_and_a_missing_gpu_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" cpu ") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device is available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu please")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda:3")  # torchrun: this process's own GPU
    assert resolve_device("cuda:1", local_rank=3) == torch.device("cuda:1")  # an explicit index is kept
