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

"""ki_vla.atomic: what a killed writer leaves behind is cleaned or restored; a failed write keeps the old folder."""
import errno
import os

import pytest

from ki_vla.atomic import atomic_dir, publish_dir, recover_interrupted


def _folder(path, text):
    path.mkdir(parents=True)
    (path / "weights").write_text(text)


def test_recover_deletes_half_built_folders_and_restores_a_swapped_out_one(tmp_path):
    _folder(tmp_path / ".step_0000010.tmp-abc", "half")   # killed while writing step 10
    _folder(tmp_path / ".final.old-123", "old final")      # killed between the two renames: final/ is missing
    _folder(tmp_path / "step_0000005", "five")
    _folder(tmp_path / ".step_0000005.old-9", "stale")     # killed after the swap: step_5 is the new one
    done = recover_interrupted(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "step_0000005"]
    assert (tmp_path / "final" / "weights").read_text() == "old final"
    assert (tmp_path / "step_0000005" / "weights").read_text() == "five"
    assert len(done) == 3 and any("restored final" in d for d in done)
    assert recover_interrupted(tmp_path / "missing") == []


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "ckpt"
    atomic_dir(target, lambda tmp: (tmp / "weights").write_text("v1"))

    def full_disk(tmp):
        (tmp / "weights").write_text("v2 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError):
        atomic_dir(target, full_disk)
    assert (target / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_publish_swaps_a_finished_folder_in_and_refuses_to_replace_when_asked(tmp_path, monkeypatch):
    """The one swap every writer uses (checkpoints, datasets, collect): old or new, never neither."""
    _folder(tmp_path / "data", "old")
    _folder(tmp_path / ".data.partial-1", "new")
    with pytest.raises(FileExistsError):
        publish_dir(tmp_path / ".data.partial-1", tmp_path / "data", replace=False)
    assert (tmp_path / "data" / "weights").read_text() == "old"

    real_replace = os.replace

    def second_rename_fails(src, dst):
        if str(src).endswith(".data.partial-1"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError):
        publish_dir(tmp_path / ".data.partial-1", tmp_path / "data")
    assert (tmp_path / "data" / "weights").read_text() == "old"  # the moved-aside folder was put back
    monkeypatch.setattr(os, "replace", real_replace)
    publish_dir(tmp_path / ".data.partial-1", tmp_path / "data")
    assert (tmp_path / "data" / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
