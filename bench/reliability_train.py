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

"""The reliability campaign's training half: SIGKILLs at random moments (and inside checkpoint writes), SIGTERM
preemption, and a disk that fills up during a checkpoint write. Each is a real `ki-vla train` process on the
`tiny` model and a synthetic two-episode dataset, judged against an uninterrupted run of the same command.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny_dataset(work: Path) -> Path:
    from ki_vla.data.bag import BagConversionConfig, convert_bags
    from ki_vla.testing import write_synthetic_bag

    bags = [write_synthetic_bag(work / "ep0", storage="mcap", duration_s=1.2),
            write_synthetic_bag(work / "ep1", storage="sqlite3", duration_s=1.0, instruction="transfer the blue cube")]
    return convert_bags(bags, work / "dataset", BagConversionConfig(image_size=(32, 32)), progress=False)


def train_cmd(dataset: Path, out: Path, steps: int, save_every: int) -> list[str]:
    return [sys.executable, "-m", "ki_vla.cli", "train", "--config", "config/train/tiny.yaml", f"dataset={dataset}",
            f"output_dir={out}", f"max_steps={steps}", f"save_every={save_every}", "log_every=1", "progress=false",
            "tensorboard=false", "fast_vocab_size=256", "batch_size=2", "keep_checkpoints=1000", "resume=true"]


def checkpoint_problems(out: Path) -> list[str]:
    """Every complete-looking checkpoint must load: weights, EMA weights, optimizer state."""
    import torch

    from ki_vla.model.policy import KIPolicy
    from ki_vla.train.trainer import STATE_FILE

    bad = []
    for ck in sorted((out / "checkpoints").glob("step_*")) if (out / "checkpoints").is_dir() else []:
        try:
            KIPolicy.from_pretrained(ck / "policy")
            if (ck / "ema").exists():
                KIPolicy.from_pretrained(ck / "ema")
            torch.load(ck / STATE_FILE, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any failure to load is what is counted
            bad.append(f"{ck.name}: {type(exc).__name__}: {exc}")
    return bad


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    from ki_vla.model.policy import WEIGHTS

    wa, wb = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    return wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _kill_when_writing(proc: subprocess.Popen, ckpts: Path, timeout: float) -> bool:
    """SIGKILL the moment a checkpoint's temporary folder appears; False if none appeared in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name.startswith(".") and ".tmp-" in p.name for p in ckpts.iterdir()):
            proc.kill()
            return True
        time.sleep(0.001)
    return False


def run_kills(work: Path, dataset: Path, kills: int, steps: int, save_every: int, seed: int = 0,
              progress: bool = True) -> dict[str, Any]:
    """The same run done once straight and once with `kills` SIGKILLs (half inside checkpoint writes)."""
    rng = np.random.default_rng(seed)
    ref = work / "reference"
    t0 = time.monotonic()
    subprocess.run(train_cmd(dataset, ref, steps, save_every), cwd=ROOT, env=ENV, check=True, capture_output=True)
    ref_s = time.monotonic() - t0
    out = work / "killed"
    done, in_write, corrupt, starts = 0, 0, [], 0
    while done < kills:
        starts += 1
        proc = subprocess.Popen(train_cmd(dataset, out, steps, save_every), cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        during_write = bool(done % 2) and _kill_when_writing(proc, out / "checkpoints", ref_s + 30)
        if during_write:
            in_write += 1
        else:
            time.sleep(float(rng.uniform(0.3, max(0.5, ref_s))))
            if proc.poll() is None:
                proc.kill()
        proc.wait()
        if proc.returncode == 0:  # it finished before the kill: start over so every kill lands in a run
            shutil.rmtree(out)
            continue
        done += 1
        corrupt += checkpoint_problems(out)
        if progress:
            print(f"  train kill {done}/{kills}{' (inside a checkpoint write)' if during_write else ''}", flush=True)
    finish = subprocess.run(train_cmd(dataset, out, steps, save_every), cwd=ROOT, env=ENV, capture_output=True,
                            text=True)
    leftovers = [p.name for d in (out, out / "checkpoints") if d.is_dir() for p in d.iterdir()
                 if p.name.startswith(".")]
    return {"kills": done, "kills_in_checkpoint_writes": in_write, "starts": starts,
            "finished": finish.returncode == 0, "corrupt_checkpoints": corrupt,
            "final_weights_equal_uninterrupted": finish.returncode == 0 and _same_weights(ref / "final", out / "final"),
            "losses_equal_uninterrupted": finish.returncode == 0 and _losses(ref) == _losses(out),
            "leftover_temporaries": leftovers}


def run_sigterm(work: Path, dataset: Path) -> dict[str, Any]:
    """How SLURM and Kubernetes preempt: SIGTERM mid-run -> a checkpoint and exit 0."""
    out = work / "sigterm"
    proc = subprocess.Popen(train_cmd(dataset, out, 100000, 100000), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    saved = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").is_dir() else []
    return {"exit_code": proc.returncode, "checkpoints": saved, "said": "preempted (SIGTERM)" in text,
            "loads": not checkpoint_problems(out)}


def _fits_one_checkpoint(reference: Path) -> int:
    ck = sorted((reference / "checkpoints").glob("step_*"))[0]
    return sum(p.stat().st_size for p in ck.rglob("*") if p.is_file())


def run_full_disk(work: Path, dataset: Path, steps: int = 6, save_every: int = 3,
                  method: str = "auto") -> dict[str, Any]:
    """The disk fills during the second checkpoint: the first must stay loadable and the error must say so.

    A real full filesystem where the kernel allows it (a tmpfs sized for 1.5 checkpoints in a private mount
    namespace, `unshare -Urm`); else (or with method="fsize") RLIMIT_FSIZE on the resumed run (writes past the
    limit fail with EFBIG)."""
    ref = work / "disk_reference"
    subprocess.run(train_cmd(dataset, ref, save_every, save_every), cwd=ROOT, env=ENV, check=True, capture_output=True)
    size = _fits_one_checkpoint(ref)
    data_copy = work / "disk_dataset"
    shutil.copytree(dataset, data_copy)
    mnt = work / "small_disk"
    mnt.mkdir()
    out = mnt / "run"
    check = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import reliability_train as r; "
             f"from pathlib import Path; print('CHECK', json.dumps(r.checkpoint_problems(Path({str(out)!r}))))")
    cmd = " ".join(f"'{c}'" for c in train_cmd(data_copy, out, steps, save_every))
    script = (f"mount -t tmpfs -o size={int(size * 1.5)} tmpfs '{mnt}' && cd '{ROOT}' && {cmd}; echo RC=$?; "
              f"'{sys.executable}' -c \"{check}\"; ls '{out}/checkpoints'")
    tmpfs = method == "tmpfs" or (method == "auto" and shutil.which("unshare") is not None and
                                  subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0)
    if tmpfs:
        how = "tmpfs in a private mount namespace (ENOSPC)"
        res = subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=300)
        text = res.stdout + res.stderr
        rc = int(text.split("RC=")[1].split()[0]) if "RC=" in text else None
        problems = json.loads(text.split("CHECK ")[1].splitlines()[0]) if "CHECK " in text else ["no check ran"]
        kept = [ln for ln in res.stdout.splitlines() if ln.startswith("step_")]
    else:
        how = "RLIMIT_FSIZE on the resumed run (EFBIG)"
        shutil.rmtree(mnt)
        out = work / "fsize_run"
        subprocess.run(train_cmd(data_copy, out, save_every, save_every), cwd=ROOT, env=ENV, check=True,
                       capture_output=True)
        limit = size // 4

        def cap() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        res = subprocess.run(train_cmd(data_copy, out, steps, save_every), cwd=ROOT, env=ENV, capture_output=True,
                             text=True, preexec_fn=cap, timeout=300)
        text, rc = res.stdout + res.stderr, res.returncode
        problems = checkpoint_problems(out)
        kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    error_lines = [ln for ln in text.splitlines() if "error:" in ln]
    return {"how": how, "checkpoint_bytes": size, "exit_code": rc, "error": error_lines[-1] if error_lines else None,
            "traceback": "Traceback" in text, "checkpoints_left": kept, "corrupt_checkpoints": problems,
            "says_previous_intact": any("is intact" in ln for ln in error_lines)}


def run_train(kills: int = 20, steps: int = 40, save_every: int = 3, progress: bool = True,
              work: Path | None = None) -> dict[str, Any]:
    work = work or Path(tempfile.mkdtemp(prefix="ki_vla_reliability_train_"))
    work.mkdir(parents=True, exist_ok=True)
    dataset = tiny_dataset(work)
    return {"kills": run_kills(work, dataset, kills, steps, save_every, progress=progress),
            "sigterm": run_sigterm(work, dataset), "full_disk": run_full_disk(work, dataset), "work": str(work)}
