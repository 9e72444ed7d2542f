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

"""A short run of the reliability campaign (bench/reliability.py runs the full one): fuzzed topics over real DDS
with every executor command checked against the limits, a killed policy node, killed training runs, a full disk
and bad files. Counts and outcomes are asserted, never speed."""
import collections
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from ki_vla_ros import fuzz  # noqa: E402

GENERATORS = {fuzz.bad_images: "Image", fuzz.bad_compressed: "CompressedImage", fuzz.bad_joint_states: "JointState",
              fuzz.bad_trajectories: "JointTrajectory", fuzz.bad_strings: "String", fuzz.bad_clocks: "Clock",
              fuzz.bad_uints: "UInt32", fuzz.bad_int64s: "Int64"}


@pytest.mark.parametrize("gen", list(GENERATORS), ids=lambda g: g.__name__)
def test_fuzz_generators_are_seeded_and_try_every_kind_in_the_first_pass(gen):
    args = () if gen in (fuzz.bad_strings, fuzz.bad_uints, fuzz.bad_int64s) else (100.0,)
    first = list(gen(np.random.default_rng(3), 40, *args))
    again = list(gen(np.random.default_rng(3), 40, *args))
    assert [c for c, _ in first] == [c for c, _ in again]
    assert all(type(m).__name__ == GENERATORS[gen] for _, m in first)
    kinds = collections.Counter(c for c, _ in first)
    assert len(kinds) >= 3


def test_fuzzed_graph_stays_within_limits_and_recovers_from_a_killed_policy(tmp_path):
    from reliability_ros import run_ros

    out = run_ros(messages=20, rate_hz=400.0, victims=("policy_node",), progress=False, work=tmp_path)
    assert len(out["fuzz"]) == 15 and all(r["sent"] == 20 for r in out["fuzz"])
    assert [r["topic"] for r in out["fuzz"] if r["crashed"]] == []
    assert out["violations"] == [] and out["commands_checked"] > 100
    assert all(out["answering_after_fuzz"].values()), out["answering_after_fuzz"]
    (kill,) = out["process_faults"]
    assert "error" not in kill, kill
    assert kill["time_to_hold_s"] is not None and kill["time_to_resume_s"] is not None, kill
    assert kill["out_of_limit_commands"] == 0 and all(out["answering_after_kills"].values())


def test_killed_training_resumes_exactly_and_a_full_disk_keeps_the_last_checkpoint(tmp_path):
    from reliability_train import run_full_disk, run_kills, tiny_dataset

    dataset = tiny_dataset(tmp_path)
    k = run_kills(tmp_path, dataset, kills=2, steps=9, save_every=3, progress=False)
    assert k["kills"] == 2 and k["corrupt_checkpoints"] == [] and k["leftover_temporaries"] == []
    assert k["final_weights_equal_uninterrupted"] and k["losses_equal_uninterrupted"]
    disk = run_full_disk(tmp_path, dataset, method="fsize")
    assert disk["exit_code"] == 1 and not disk["traceback"] and disk["says_previous_intact"], disk
    assert disk["checkpoints_left"] == ["step_0000003"] and disk["corrupt_checkpoints"] == []


def test_bad_files_and_command_lines_get_one_clear_line(tmp_path):
    from reliability_files import run_files

    out = run_files(tmp_path, progress=False, only=9)
    assert out["tried"] >= 5
    assert out["ok"] == out["tried"], [c for c in out["cases"] if not c["ok"]]
