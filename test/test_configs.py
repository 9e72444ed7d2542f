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

"""Configs from YAML and the command line: values coerced to each field's type, bad ones named in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ki_vla.configs import ConfigError
from ki_vla.model.config import PolicyConfig
from ki_vla.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_are_coerced_to_the_field_types():
    cfg = TrainConfig.load("config/train/tiny.yaml", ["lr=1e-3", "max_steps=1e4", "tensorboard=false",
                                                      "betas=[0.9, 0.99]", "variant=null", "dataset=123"])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.max_steps == 10000 and isinstance(cfg.max_steps, int)
    assert cfg.tensorboard is False and cfg.betas == (0.9, 0.99) and cfg.variant is None and cfg.dataset == "123"


@pytest.mark.parametrize("override, field, expected", [
    ("lr=fast", "lr", "float"), ("max_steps=1.5", "max_steps", "int"), ("tensorboard=maybe", "tensorboard", "bool"),
    ("betas=[0.9]", "betas", "2 values"), ("max_steps=true", "max_steps", "int"),
    ("batch_size=[8]", "batch_size", "int"),
])
def test_a_bad_override_names_the_field_and_the_type(override, field, expected):
    with pytest.raises(ConfigError, match=rf"train config\.{field}.*{expected}"):
        TrainConfig.load("config/train/tiny.yaml", [override])


def test_unknown_keys_and_nested_model_fields(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.load(None, ["learning_rate=1e-3"])
    data = PolicyConfig.from_yaml(ROOT / "config/model/tiny.yaml").to_dict()
    data["vision"]["image_size"] = "64"          # a quoted number in a YAML file
    data["flow_alpha"] = "5e-1"                  # YAML 1.1 reads this as a string
    cfg = PolicyConfig.from_dict(data)
    assert cfg.vision.image_size == 64 and cfg.flow_alpha == 0.5
    data["vision"]["hidden_size"] = "wide"
    with pytest.raises(ConfigError, match=r"vision\.hidden_size: expected int, got 'wide'"):
        PolicyConfig.from_dict(data)


def test_the_train_cli_prints_one_line_not_a_traceback(tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "ki_vla.cli", "train", "--config", "config/train/tiny.yaml",
                          f"dataset={tmp_path}", "lr=abc", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "train config.lr: expected float, got 'abc'" in run.stderr
