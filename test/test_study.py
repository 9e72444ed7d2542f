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

"""`ki-vla study`: its pieces (probes, scene questions, instruction swap, verdicts) and a smoke run end to end.

Behaviour only: no result of the study is asserted (the tiny model's numbers mean nothing)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ki_vla.model.config import PolicyConfig
from ki_vla.model.policy import KIPolicy
from ki_vla.study import knowledge, report, texts
from ki_vla.study.actions import swap_colour
from ki_vla.study.scene_qa import scene_questions


def test_the_probes_are_disjoint_from_the_robot_prompts():
    words = " ".join(texts.ENGLISH).lower()
    assert not any(w in words for w in ("robot", "cube", "gripper", "transfer the"))
    assert len(texts.CLOZE) == len(set(p for p, _ in texts.CLOZE)) >= 40
    assert all(a.startswith(" ") for _, a in texts.CLOZE)


def test_retention_is_zero_for_the_reference_and_grows_when_the_backbone_changes():
    policy = KIPolicy(PolicyConfig.from_yaml("config/model/tiny.yaml"))
    tok = policy.processor.text_tokenizer
    ref = knowledge.reference(policy.backbone, tok, texts.ENGLISH[:2], texts.CLOZE)
    same = knowledge.retention(policy.backbone, tok, ref, texts.ENGLISH[:2], texts.CLOZE)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["english_nll_delta"] == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        for p in policy.backbone.language_model.layers.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    changed = knowledge.retention(policy.backbone, tok, ref, texts.ENGLISH[:2], texts.CLOZE)
    assert changed["kl"] > 1e-3


def test_swap_colour_and_scene_questions():
    assert swap_colour("transfer the red cube") == "transfer the blue cube"
    assert swap_colour("transfer the blue cube") == "transfer the red cube"
    with pytest.raises(ValueError, match="names no colour"):
        swap_colour("transfer the cube")
    left, right = np.array([-0.5, 0.5, 0]), np.array([0.5, 0.5, 0])
    qa = dict(scene_questions(np.array([-0.1, 0.5, 0]), np.array([0.2, 0.5, 0]), left, right))
    assert qa["Which cube is closer to the left arm, the red one or the blue one?"] == "red"
    assert qa["Which cube is closer to the right arm, the red one or the blue one?"] == "blue"


def _result(kl, final, true, swapped, seconds):
    curve = [{"step": 10, "action_mse": final * 2}, {"step": 20, "action_mse": final}]
    return {"retention": {"kl": kl}, "curve": curve, "hold_still_mse": 0.45,
            "language": {"true_mse": true, "swapped_mse": swapped}, "step_seconds": seconds}


def test_verdicts_follow_the_numbers():
    results = {"ki": _result(0.01, 0.1, 0.1, 0.3, 1.2), "joint": _result(0.5, 0.1, 0.1, 0.1, 1.2),
               "pi0": _result(0.4, 0.4, 0.4, 0.4, 1.0), "frozen": _result(0.0, 0.5, 0.5, 0.5, 0.5)}

    def verdict(start):
        return next(r["verdict"] for r in report.claims(results, target=0.25) if r["claim"].startswith(start))

    assert verdict("Training the expert") == "agrees"
    assert verdict("Freezing the backbone") == "agrees"
    assert verdict("Insulated training") == "agrees"
    assert verdict("KI costs") == "agrees"
    results["ki"]["retention"]["kl"] = 1.0
    assert verdict("Training the expert") == "does not agree"
    results["pi0"]["step_seconds"] = 0.5
    assert verdict("KI costs") == "does not agree (costlier here)"
    # effects the budget did not produce are not disagreements: nobody beats holding still, nobody reads the words
    for r in results.values():
        r["hold_still_mse"] = 0.05
        r["language"]["swapped_mse"] = r["language"]["true_mse"] * 1.001
    assert verdict("Freezing the backbone").startswith("not testable")
    assert verdict("Insulated training").startswith("not testable")
    results["ki_cotrain"] = _result(0.5, 0.1, 0.1, 0.1001, 1.3)
    assert verdict("Co-training").startswith("partly: knowledge agrees; language not testable")
    assert report.steps_to(results["ki"]["curve"], 0.25) == 10
    assert report.steps_to(results["pi0"]["curve"], 0.25) is None


def test_bad_variants_are_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ki_vla.cli", "study", "--out", str(tmp_path),
                           "--variants", "ki,nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--variants must be" in proc.stderr and "Traceback" not in proc.stderr


def test_a_tiny_study_runs_end_to_end(tmp_path):
    # frozen + ki_cotrain: the cheapest variant beside the one with the most moving parts (an untrained pi0_fast
    # decodes every FAST token to the length limit: ~2 min of this test's 3 on 2 loaded cores)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "ki_vla.cli", "study", "--out", str(out), "--model", "config/model/tiny.yaml",
           "--image-size", "32", "--steps", "2", "--episodes", "2", "--val-episodes", "1", "--segments", "2",
           "--per-episode", "2", "--scenes", "2", "--batch-size", "2", "--variants", "frozen,ki_cotrain",
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    study = json.loads((out / "study.json").read_text())
    assert list(study["variants"]) == ["frozen", "ki_cotrain"]
    for name, r in study["variants"].items():
        assert [p["step"] for p in r["curve"]] == [1, 2]
        assert r["peak_rss_gib"] > 0 and r["language"]["samples"] == 2
        assert (out / name / "final" / "config.yaml").is_file()
    assert (out / "report.md").read_text().count("| ki_cotrain") >= 1 and (out / "learning.png").is_file()
    # a finished variant is not trained again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already done") == 2
