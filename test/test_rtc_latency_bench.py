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

"""bench/rtc_latency.py: the grid's table and its arguments (the cells themselves are `ki-vla eval-sim` runs,
tested in test_eval_sim.py)."""
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("rtc_latency", Path(__file__).resolve().parents[1] / "bench" /
                                               "rtc_latency.py")
rtc_latency = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rtc_latency)


def _cell(successes: int, jump: float) -> dict:
    return {"episodes": 10, "successes": successes, "success_rate": successes / 10, "success_rate_ci95": [0.0, 1.0],
            "latency_ms_p50": 100.0, "switch_jump_mean": jump, "switch_jump_max": 2 * jump, "jerk_mean": 1.0,
            "control_rate_hz": 50.0}


def test_the_table_names_the_lowest_jump_and_the_success_rtc_keeps(tmp_path):
    args = rtc_latency.parse_args(["--model", str(tmp_path), "--out", str(tmp_path), "--latencies", "0,300"])
    cells = {("temporal_ensembling", 0.0): _cell(5, 0.01), ("latest", 0.0): _cell(8, 0.09),
             ("rtc", 0.0): _cell(8, 0.001),
             ("temporal_ensembling", 300.0): _cell(2, 0.002), ("latest", 300.0): _cell(4, 0.2),
             ("rtc", 300.0): _cell(6, 0.003)}
    rows = {(r["merger"], r["latency_ms"]): r for r in rtc_latency.table(args, cells)}
    assert rows[("rtc", 0.0)]["lowest_jump_here"] and rows[("rtc", 0.0)]["kept_of_first_latency"] is None
    assert rows[("temporal_ensembling", 300.0)]["lowest_jump_here"] and not rows[("rtc", 300.0)]["lowest_jump_here"]
    assert rows[("rtc", 300.0)]["kept_of_first_latency"] == pytest.approx(0.75)
    cells[("temporal_ensembling", 300.0)]["switch_jump_mean"] = None   # no switches: every chunk refused
    rows = {(r["merger"], r["latency_ms"]): r for r in rtc_latency.table(args, cells)}
    assert rows[("rtc", 300.0)]["lowest_jump_here"]


@pytest.mark.parametrize("argv, said", [
    (["--mergers", "rtc,nope"], "unknown nope"),
    (["--latencies", "0,abc"], "comma-separated"),
    (["--latencies", "-5"], "none negative"),
    (["--episodes", "0"], "--episodes"),
])
def test_bad_arguments_are_one_clear_line(argv, said, capsys):
    with pytest.raises(SystemExit):
        rtc_latency.parse_args(["--model", "m", "--out", "o", *argv])
    assert said in capsys.readouterr().err
