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

"""The safety and reliability campaign: fuzzed inputs, killed processes, preempted and killed training, a full disk,
bad files and bad command lines. Prints one table and writes the details as JSON.

    .venv/bin/python bench/reliability.py [--messages 10000] [--kills 20] [--sections ros,train,files] [--json out.json]

Sections (each a module beside this file):
  ros    bench/reliability_ros.py: the deployed graph (sim, camera, policy with the random tiny model, executor) gets
         --messages malformed messages on every input topic (ki_vla_ros.fuzz), while every command the executor
         publishes is checked against the URDF's position and velocity limits; then each node still answers; then
         sim_node, policy_node and camera_node are SIGKILLed in turn (time until the executor holds, time until
         control resumes after a restart).
  train  bench/reliability_train.py: --kills SIGKILLs of one training run (half inside checkpoint writes), every
         checkpoint loadable after each, the resumed run's final weights and losses equal to an uninterrupted run's;
         SIGTERM -> checkpoint + exit 0; a disk that fills during a checkpoint write.
  files  bench/reliability_files.py: damaged checkpoints, datasets, bags and configs, and bad command lines: one
         error line each, no traceback, nothing half-written.
A short version runs in `make test` (test/test_reliability.py). Runs alone on 2 cores: about 5 min with the
defaults (the ros section publishes at --rate messages/s per topic).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, result, goal) rows of the campaign's table."""
    rows: list[tuple[str, str, str]] = []
    ros = results.get("ros")
    if ros:
        fuzz = ros["fuzz"]
        rows += [("fuzzed messages (topics, kinds)", f"{sum(r['sent'] for r in fuzz)} ({len(fuzz)} topics, "
                  f"{sum(r['cases'] for r in fuzz)} kinds)", ">= 10000 per topic"),
                 ("node crashes under fuzzing", str(sum(len(r["crashed"]) for r in fuzz)), "0"),
                 ("commands checked / outside joint or velocity limits",
                  f"{ros['commands_checked']} / {len(ros['violations'])}", "0 outside"),
                 ("nodes answering after fuzzing", _answering(ros["answering_after_fuzz"]), "all")]
        for pf in ros.get("process_faults", []):
            if "error" in pf:
                rows.append((f"kill -9 {pf['killed']}", pf["error"], "hold, then resume"))
                continue
            rows.append((f"kill -9 {pf['killed']}: executor holds after / bound",
                         f"{pf['time_to_hold_s']} s / {pf.get('bound_s')} s", "<= bound"))
            rows.append((f"kill -9 {pf['killed']}: control resumes after restart",
                         "never (90 s)" if pf["time_to_resume_s"] is None else f"{pf['time_to_resume_s']} s",
                         "resumes"))
        if "answering_after_kills" in ros:
            rows.append(("nodes answering after the kills", _answering(ros["answering_after_kills"]), "all"))
    tr = results.get("train")
    if tr:
        k = tr["kills"]
        rows += [("training SIGKILLs (inside checkpoint writes)", f"{k['kills']} ({k['kills_in_checkpoint_writes']})",
                  "20"),
                 ("corrupt checkpoints after the kills", str(len(k["corrupt_checkpoints"])), "0"),
                 ("resumed run == uninterrupted (weights, losses)",
                  f"{k['final_weights_equal_uninterrupted']}, {k['losses_equal_uninterrupted']}", "True, True"),
                 ("SIGTERM: exit code, checkpoint", f"{tr['sigterm']['exit_code']}, {tr['sigterm']['checkpoints']}",
                  "0, one"),
                 (f"full disk ({tr['full_disk']['how']})",
                  "previous intact: "
                  f"{not tr['full_disk']['corrupt_checkpoints'] and bool(tr['full_disk']['checkpoints_left'])}"
                  f", says so: {tr['full_disk']['says_previous_intact']}, traceback: {tr['full_disk']['traceback']}",
                  "True, True, False")]
    fl = results.get("files")
    if fl:
        rows.append(("bad files and command lines: tried / one clean error line",
                     f"{fl['tried']} / {fl['ok']} (tracebacks {fl['tracebacks']}, half-written {fl['left_output']})",
                     "all"))
    return rows


def _answering(d: dict[str, bool]) -> str:
    bad = [n for n, ok in d.items() if not ok]
    return f"{sum(d.values())}/{len(d)}" + (f" (not: {', '.join(bad)})" if bad else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="ros,train,files", help="comma-separated: ros, train, files")
    p.add_argument("--messages", type=int, default=10000, help="fuzzed messages per input topic (default 10000)")
    p.add_argument("--rate", type=float, default=1000.0, help="fuzzing rate per topic, messages/s (default 1000)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of the training run (default 20)")
    p.add_argument("--no-process-faults", action="store_true", help="ros section: fuzz only")
    p.add_argument("--victims", default="sim_node,policy_node,camera_node",
                   help="ros section: nodes to SIGKILL, in order (default %(default)s; policy_node,camera_node "
                        "reproduces the open image-delivery defect, see README)")
    p.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    p.add_argument("--json", default=None, help="write the full results here")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"ros", "train", "files"}
    if unknown or args.messages < 1 or args.kills < 1 or args.rate <= 0:
        p.error(f"bad arguments: unknown sections {sorted(unknown)}" if unknown else
                "--messages, --kills and --rate must be positive")
    work = Path(args.work or tempfile.mkdtemp(prefix="ki_vla_reliability_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args), "work": str(work)}
    t0 = time.monotonic()
    if "ros" in sections:
        from reliability_ros import run_ros

        print("== ros: fuzzing the graph, then killing its processes", flush=True)
        victims = tuple(v.strip() for v in args.victims.split(",") if v.strip())
        results["ros"] = run_ros(args.messages, args.rate, process_faults=not args.no_process_faults,
                                 work=work / "ros", victims=victims)
    if "train" in sections:
        from reliability_train import run_train

        print("== train: SIGKILL, SIGTERM, full disk", flush=True)
        results["train"] = run_train(kills=args.kills, work=work / "train")
    if "files" in sections:
        from reliability_files import run_files

        print("== files and command lines", flush=True)
        results["files"] = run_files(work / "files")
    results["wall_s"] = round(time.monotonic() - t0, 1)
    rows = summary_rows(results)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'result':<60}  goal")
    for measure, result, goal in rows:
        print(f"{measure:<{width}}  {result:<60}  {goal}")
    print(f"({results['wall_s']} s; details in {args.json or 'the --json file'})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
