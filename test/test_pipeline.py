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

"""The user's path in one test: sim demonstrations -> dataset -> a few training steps -> open-loop evaluation."""
import json

from ki_vla.cli import main


def test_collect_train_eval_bag(tmp_path, capsys):
    data, run, report = tmp_path / "data", tmp_path / "run", tmp_path / "report"
    assert main(["collect", "--task", "transfer_cube", "--episodes", "1", "--out", str(data),
                 "--image-size", "48x64", "--no-progress"]) == 0
    assert main(["train", "--config", "config/train/tiny.yaml", f"dataset={data}", f"output_dir={run}", "max_steps=4",
                 "batch_size=4", "save_every=4", "log_every=1", "progress=false", "tensorboard=false",
                 "fast_vocab_size=256"]) == 0
    assert main(["eval-bag", "--model", str(run / "final"), str(data), "--report", str(report), "--stride", "40",
                 "--quiet"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["frames_evaluated"] == 10 and metrics["episodes_evaluated"] == 1
    assert "trained weights" in (report / "report.md").read_text()
