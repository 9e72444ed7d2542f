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

"""The reliability campaign's file and command-line half: every bad input gets one clear error line, no traceback,
and nothing half-written where the command would have written its output.

Each case is (name, command line, what must not be left behind). The bad files are made from a real tiny
checkpoint, a real dataset and real bags (bench/reliability_train.tiny_dataset), damaged one way each.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_train import ENV, tiny_dataset, train_cmd  # noqa: E402

KI_VLA = [sys.executable, "-m", "ki_vla.cli"]
KI_VLA_ROS = [sys.executable, "-m", "ki_vla_ros.cli"]


@dataclass
class Case:
    kind: str                        # "file" | "cli"
    name: str
    argv: list[str]
    output: Path | None = None       # must not exist afterwards (or be the untouched original)


def _run(case: Case) -> dict[str, Any]:
    res = subprocess.run(case.argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    err = res.stderr + res.stdout
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    left = (case.output is not None and case.output.exists()
            and any(case.output.iterdir() if case.output.is_dir() else [1]))
    ok = res.returncode != 0 and "Traceback" not in err and len(lines) >= 1 and not left
    return {"kind": case.kind, "case": case.name, "exit_code": res.returncode, "ok": ok,
            "traceback": "Traceback" in err, "error": lines[-1][:300] if lines else err.strip()[-300:],
            "left_output": left}


def _damage(src: Path, dst: Path, fn: Callable[[Path], None]) -> Path:
    shutil.copytree(src, dst)
    fn(dst)
    return dst


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _garbage(path: Path, seed: int = 0) -> None:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def file_cases(work: Path, dataset: Path, checkpoint: Path) -> list[Case]:
    from ki_vla.model.policy import CONFIG, WEIGHTS

    cases: list[Case] = []
    report = work / "report_must_not_exist"

    def ck(name: str, fn: Callable[[Path], None]) -> None:
        bad = _damage(checkpoint, work / f"ck_{len(cases)}", fn)
        cases.append(Case("file", f"checkpoint: {name}", [*KI_VLA, "eval-bag", "--model", str(bad), "--report",
                                                          str(report), "--max-frames", "2", "--quiet", str(dataset)],
                          report))

    ck("truncated safetensors (half)", lambda d: _truncate(d / WEIGHTS, 0.5))
    ck("truncated safetensors (header only)", lambda d: _truncate(d / WEIGHTS, 0.001))
    ck("safetensors of random bytes", lambda d: _garbage(d / WEIGHTS))
    ck("empty safetensors", lambda d: (d / WEIGHTS).write_bytes(b""))
    ck("missing safetensors", lambda d: (d / WEIGHTS).unlink())
    ck("missing config.yaml", lambda d: (d / CONFIG).unlink())
    ck("config.yaml not YAML", lambda d: (d / CONFIG).write_text("variant: [ki\n"))
    ck("config.yaml with a wrong type", lambda d: (d / CONFIG).write_text((d / CONFIG).read_text().replace(
        "horizon: ", "horizon: fifty #")))
    ck("config.yaml with an unknown key", lambda d: (d / CONFIG).write_text((d / CONFIG).read_text() + "flux: 3\n"))
    ck("weights of another shape", lambda d: (d / CONFIG).write_text((d / CONFIG).read_text().replace(
        "max_action_dim: 32", "max_action_dim: 16")))

    def ds(name: str, fn: Callable[[Path], None]) -> None:
        bad = _damage(dataset, work / f"ds_{len(cases)}", fn)
        out = work / f"train_{len(cases)}"
        cases.append(Case("file", f"dataset: {name}", [*train_cmd(bad, out, 2, 2)], out / "checkpoints"))

    parquet = lambda d: sorted((d / "data").rglob("*.parquet"))[0]  # noqa: E731
    info = lambda d: d / "meta" / "info.json"  # noqa: E731
    ds("missing parquet file", lambda d: parquet(d).unlink())
    ds("truncated parquet file", lambda d: _truncate(parquet(d), 0.5))
    ds("parquet of random bytes", lambda d: _garbage(parquet(d)))
    ds("missing video file", lambda d: sorted((d / "videos").rglob("*.mp4"))[0].unlink())
    ds("truncated video file", lambda d: _truncate(sorted((d / "videos").rglob("*.mp4"))[0], 0.3))
    ds("missing meta/info.json", lambda d: info(d).unlink())
    ds("info.json not JSON", lambda d: info(d).write_text("{"))
    ds("episode lengths that disagree with the data", lambda d: _lengths_off(d))
    ds("empty folder", lambda d: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in list(d.iterdir())])

    def bag(name: str, fn: Callable[[Path], Path]) -> None:
        path = fn(work / f"bag_{len(cases)}")
        out = work / f"converted_{len(cases)}"
        cases.append(Case("file", f"bag: {name}", [*KI_VLA, "convert-bag", "--out", str(out), "--quiet", str(path)],
                          out))

    def copied(src: Path, d: Path, damage: Callable[[Path], None]) -> Path:
        shutil.copytree(src, d)
        damage(d)
        return d

    def bare_garbage(d: Path) -> Path:
        d.mkdir()
        (d / "x.mcap").write_bytes(next((work / "ep0").rglob("*.mcap")).read_bytes()[:100])
        return d / "x.mcap"

    def empty(d: Path) -> Path:
        d.mkdir()
        return d

    mcap = lambda d: next(d.rglob("*.mcap"))  # noqa: E731
    bag("mcap of random bytes", lambda d: copied(work / "ep0", d, lambda b: _garbage(mcap(b))))
    bag("truncated mcap", lambda d: copied(work / "ep0", d, lambda b: _truncate(mcap(b), 0.4)))
    bag("metadata.yaml missing", lambda d: copied(work / "ep0", d, lambda b: (b / "metadata.yaml").unlink()))
    bag("metadata.yaml garbage", lambda d: copied(work / "ep0", d, lambda b: (b / "metadata.yaml").write_text(": : :")))
    bag("sqlite3 database of random bytes",
        lambda d: copied(work / "ep1", d, lambda b: _garbage(next(b.rglob("*.db3")), 1)))
    bag("bare .mcap file cut to 100 bytes", bare_garbage)
    bag("empty folder", empty)

    out = work / "train_badcfg"
    for name, text in (("train config with a wrong type", "lr: fast\n"),
                       ("train config with an unknown key", "flux: 1\n"),
                       ("train config not YAML", "lr: [\n"), ("train config that is a list", "- 1\n")):
        p = work / f"cfg_{len(cases)}.yaml"
        p.write_text(f"model: config/model/tiny.yaml\ndataset: {dataset}\noutput_dir: {out}\n" + text)
        cases.append(Case("file", name, [*KI_VLA, "train", "--config", str(p)], out / "checkpoints"))
    model = work / "bad_model.yaml"
    model.write_text((ROOT / "config/model/tiny.yaml").read_text() + "\nvision: 3\n")
    cases.append(Case("file", "model config with a section of the wrong type",
                      [*KI_VLA, "info", "--model", str(model)], None))
    graph = work / "bad_graph.yaml"
    graph.write_text((ROOT / "config/bimanual.yaml").read_text().replace("control_hz: 50.0", "control_hz: fast"))
    cases.append(Case("file", "graph config with a wrong type", [*KI_VLA_ROS, "up", "--config", str(graph),
                                                                 "--duration", "5"], None))
    return cases


def _lengths_off(d: Path) -> None:
    """Make meta/episodes claim more frames for episode 0 than the data holds."""
    import pyarrow.parquet as pq

    files = sorted((d / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(files[0])
    cols = {n: table.column(n).to_pylist() for n in table.column_names}
    cols["length"][0] += 100
    if "dataset_to_index" in cols:
        cols["dataset_to_index"][0] += 100
    import pyarrow as pa

    pq.write_table(pa.table(cols, schema=table.schema), files[0])


def cli_cases(work: Path, dataset: Path) -> list[Case]:
    out = work / "cli_out"
    c = [
        ("train: a value of the wrong type", [*train_cmd(dataset, out, 2, 2), "lr=fast"]),
        ("train: an unknown key", [*train_cmd(dataset, out, 2, 2), "flux=1"]),
        ("train: an override without '='", [*train_cmd(dataset, out, 2, 2), "lr"]),
        ("train: negative steps", [*train_cmd(dataset, out, 2, 2), "max_steps=-5"]),
        ("train: a dataset that does not exist", train_cmd(work / "nope", out, 2, 2)),
        ("collect: zero episodes", [*KI_VLA, "collect", "--task", "transfer_cube", "--episodes", "0", "--out",
                                    str(out)]),
        ("collect: bad image size", [*KI_VLA, "collect", "--task", "transfer_cube", "--episodes", "1", "--out",
                                     str(out), "--image-size", "12xfoo"]),
        ("collect: unknown task", [*KI_VLA, "collect", "--task", "juggle", "--episodes", "1", "--out", str(out)]),
        ("collect: negative noise", [*KI_VLA, "collect", "--task", "transfer_cube", "--episodes", "1", "--out",
                                     str(out), "--action-noise", "-1"]),
        ("eval-sim: zero episodes", [*KI_VLA, "eval-sim", "--model", "config/model/tiny.yaml", "--task",
                                     "transfer_cube", "--episodes", "0", "--report", str(out)]),
        ("eval-sim: a model that does not exist", [*KI_VLA, "eval-sim", "--model", str(work / "nope"), "--task",
                                                   "transfer_cube", "--episodes", "1", "--report", str(out)]),
        ("eval-rollout: target on the wrong task", [*KI_VLA, "eval-rollout", "--model", "config/model/tiny.yaml",
                                                    "--task", "transfer_cube", "--target", "red", "--episodes", "1"]),
        ("eval-bag: no such input", [*KI_VLA, "eval-bag", "--model", "config/model/tiny.yaml", "--report", str(out),
                                     str(work / "nope")]),
        ("convert-bag: bad camera mapping", [*KI_VLA, "convert-bag", "--out", str(out), "--camera", "nothing",
                                             str(work / "ep0")]),
        ("bench: unknown model", [*KI_VLA, "bench", "--model", "enormous"]),
        ("learning-curve: not a run folder", [*KI_VLA, "learning-curve", "--run", str(work / "nope"), "--task",
                                              "transfer_cube", "--out", str(out)]),
        ("ki-vla-ros up: config that does not exist", [*KI_VLA_ROS, "up", "--config", str(work / "nope.yaml")]),
        ("ki-vla-ros up: model that does not exist", [*KI_VLA_ROS, "up", "--model", str(work / "nope")]),
    ]
    return [Case("cli", name, argv, out) for name, argv in c]


def run_files(work: Path, progress: bool = True, only: int | None = None, workers: int = 2) -> dict[str, Any]:
    """All cases (or every `only`-th, for a short run) -> per-case results and the counts.

    Cases run `workers` at a time: each is a subprocess that spends its seconds importing torch, and each writes
    only below its own paths (ck_N, ds_N, train_N, ...), so two at a time halve the wall time on 2 cores."""
    work.mkdir(parents=True, exist_ok=True)
    dataset = tiny_dataset(work)
    ck_run = work / "ck_run"
    subprocess.run(train_cmd(dataset, ck_run, 2, 2), cwd=ROOT, env=ENV, check=True, capture_output=True)
    cases = file_cases(work, dataset, ck_run / "final") + cli_cases(work, dataset)
    if only:
        cases = cases[::only]
    rows = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for case, row in zip(cases, pool.map(_run, cases)):
            rows.append(row)
            if progress:
                print(f"  {'ok ' if row['ok'] else 'BAD'} {case.kind:<4} {case.name}: {row['error'][:110]}", flush=True)
    return {"cases": rows, "tried": len(rows), "ok": sum(r["ok"] for r in rows),
            "tracebacks": sum(r["traceback"] for r in rows), "left_output": sum(r["left_output"] for r in rows)}


if __name__ == "__main__":
    import tempfile

    print(json.dumps(run_files(Path(tempfile.mkdtemp(prefix="ki_vla_files_"))), indent=1)[-2000:])
