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

"""Atomic writes: a reader (or a process killed mid-write) sees the old file/folder or the complete new one.

Used for everything the stack saves that another process may read while it is written: checkpoints,
tokenizers, dataset metadata, reports, evaluation results.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` via a temporary file in the same folder, fsync it, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(data: Any, path: str | os.PathLike[str], indent: int | None = 4) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False))


def publish_dir(tmp: str | os.PathLike[str], final: str | os.PathLike[str], replace: bool = True) -> Path:
    """Swap the finished folder `tmp` (beside `final`) into place as `final`.

    An existing `final` is moved aside first and deleted only after the swap (restored if the swap fails), so at
    every instant `final` is either the old complete folder or the new one; a process killed between the two
    renames leaves `.NAME.old-PID`, which `recover_interrupted` puts back. With replace=False an existing `final`
    is an error (a dataset that appeared while this one was written is not ours to delete).
    """
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return final
    if not replace:
        raise FileExistsError(f"{final} appeared while writing; not replacing it")
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def atomic_dir(final: str | os.PathLike[str], write: Callable[[Path], Any], fsync: bool = False) -> Path:
    """Build a folder with `write(tmp)` beside `final`, then swap it into place (`publish_dir`).

    With fsync, file contents are flushed to disk before the swap (checkpoints: a power loss must not leave a
    renamed but empty file).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        if fsync:
            for p in sorted(tmp.rglob("*")):
                if p.is_file():
                    with open(p, "rb") as f:
                        os.fsync(f.fileno())
        return publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_interrupted(parent: str | os.PathLike[str]) -> list[str]:
    """Undo what a process killed inside `atomic_dir` left in `parent`; returns what was done, for the log.

    A half-built `.NAME.tmp-*` folder is deleted. A `.NAME.old-PID` folder is the complete previous NAME, moved
    aside just before the swap: it is put back when NAME is missing (killed between the two renames) and deleted
    otherwise. Only for folders one process writes (a training run's output_dir): another writer's live tmp
    folder would be deleted too.
    """
    parent = Path(parent)
    done: list[str] = []
    if not parent.is_dir():
        return done
    for p in sorted(parent.iterdir()):
        if not (p.is_dir() and p.name.startswith(".")):
            continue
        if ".tmp-" in p.name:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"deleted the unfinished {p.name}")
        elif ".old-" in p.name:
            final = parent / p.name[1:].rsplit(".old-", 1)[0]
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"deleted {p.name} (superseded by {final.name})")
            else:
                os.replace(p, final)
                done.append(f"restored {final.name} from {p.name}")
    return done
