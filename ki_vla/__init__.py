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

"""ki_vla: knowledge-insulated VLA model and training library (pure PyTorch, no ROS).

The public names are resolved lazily so that `import ki_vla` stays cheap (no torch/transformers import)
for tools that only need, say, the joint layout or the dataset reader.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PolicyConfig": "ki_vla.model.config",
    "KIPolicy": "ki_vla.model.policy",
    "FastTokenizer": "ki_vla.tokenizer.fast",
    "Observation": "ki_vla.observation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ki_vla' has no attribute {name!r}")
