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

"""VLM co-training folder format and the robot/VLM mixture: ratio, determinism, masks, collation."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ki_vla.data.cotrain import MixtureDataset, VLMDataset
from ki_vla.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from ki_vla.data.samples import ChunkDataset
from ki_vla.joints import JOINT_NAMES


@pytest.fixture(scope="module")
def robot(tmp_path_factory: pytest.TempPathFactory) -> ChunkDataset:
    root = tmp_path_factory.mktemp("cotrain") / "ds"
    w = LeRobotDatasetWriter.create(
        root, fps=50, camera_names=["cam_high", "cam_left_wrist"], image_shape=(16, 16, 3), state_names=JOINT_NAMES,
        action_names=JOINT_NAMES, use_videos=False,
    )
    rng = np.random.default_rng(0)
    for e in range(3):
        n = 10
        imgs = {c: np.full((n, 16, 16, 3), 50 * e, dtype=np.uint8) for c in ("cam_high", "cam_left_wrist")}
        w.add_episode(imgs, rng.normal(size=(n, 14)), rng.normal(size=(n, 14)), "stack the cups")
    w.finalize()
    return ChunkDataset(LeRobotDataset(root), horizon=5, image_size=(16, 16))


def write_vlm(folder: Path, lines: list[object]) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    img = np.zeros((20, 30, 3), dtype=np.uint8)
    img[..., 2] = 255  # red in RGB
    cv2.imwrite(str(folder / "images/0001.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (folder / "samples.jsonl").write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return folder


GOOD = [
    {"image": "images/0001.png", "prompt": "What colour is the image?", "answer": "Blue."},
    "# comments and blank lines are skipped",
    "",
    {"image": None, "prompt": "Say hi.", "answer": "hi"},
    {"prompt": "Caption:", "answer": "Nothing."},
]


def test_vlm_dataset_reads_documented_format(tmp_path: Path) -> None:
    vlm = VLMDataset(write_vlm(tmp_path / "vlm", GOOD))
    assert len(vlm) == 3
    first = vlm[0]
    assert first["prompt"] == "What colour is the image?" and first["answer"] == "Blue."
    assert first["image"].shape == (20, 30, 3) and first["image"][0, 0].tolist() == [0, 0, 255]
    assert vlm[1]["image"] is None and vlm[2]["image"] is None


@pytest.mark.parametrize(
    "line, pattern",
    [
        ("{not json", r"samples.jsonl:1: not valid JSON"),
        ({"prompt": "p"}, r"samples.jsonl:1: 'answer' must be a non-empty string"),
        ({"answer": "a"}, r"samples.jsonl:1: 'prompt' must be a string"),
        ({"image": "images/missing.png", "prompt": "p", "answer": "a"}, r"image 'images/missing.png' does not exist"),
        ({"image": "../escape.png", "prompt": "p", "answer": "a"}, r"must be a path inside"),
    ],
)
def test_vlm_dataset_errors_name_file_and_line(tmp_path: Path, line: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        VLMDataset(write_vlm(tmp_path / "vlm", [line]))


def test_mixture_ratio_determinism_and_masks(tmp_path: Path, robot: ChunkDataset) -> None:
    vlm = VLMDataset(write_vlm(tmp_path / "vlm", GOOD))
    mix = MixtureDataset(robot, vlm, vlm_ratio=0.25, seed=7)
    assert len(mix) == 40  # 30 robot samples once each + 10 VLM
    kinds = [mix[i]["is_vlm"] for i in range(len(mix))]
    assert sum(kinds) == 10
    again = MixtureDataset(robot, vlm, vlm_ratio=0.25, seed=7)
    assert [again[i]["instruction"] for i in range(40)] == [mix[i]["instruction"] for i in range(40)]
    assert MixtureDataset(robot, vlm, vlm_ratio=0.25, seed=8).is_vlm.tolist() != mix.is_vlm.tolist()
    robot_seen = sorted((s["episode_index"], s["frame_index"]) for s in (mix[i] for i in range(40)) if not s["is_vlm"])
    assert robot_seen == sorted((e, t) for e in range(3) for t in range(10))  # each robot sample exactly once
    v = next(mix[i] for i in range(40) if mix[i]["is_vlm"] and mix[i]["answer"] == "Blue.")
    assert not v["action_mask"].any() and v["action_is_pad"].all()
    assert v["actions"].shape == (5, 14) and v["state"].shape == (14,)
    assert bool(v["image_mask"]["cam_high"]) and not bool(v["image_mask"]["cam_left_wrist"])
    assert v["images"]["cam_high"].shape == (16, 16, 3) and v["images"]["cam_high"][0, 0].tolist() == [0, 0, 255]
    r = next(mix[i] for i in range(40) if not mix[i]["is_vlm"])
    assert r["answer"] == "" and r["action_mask"].any()
    batch = next(iter(DataLoader(mix, batch_size=8, shuffle=False)))
    assert batch["actions"].shape == (8, 5, 14) and batch["is_vlm"].dtype == torch.bool
    assert batch["image_mask"]["cam_left_wrist"].shape == (8,)
    # Large-sample ratio check over a longer mixture.
    long = MixtureDataset(robot, vlm, vlm_ratio=0.3, seed=1, length=1000)
    assert long.is_vlm.sum() == 300


def test_mixture_rejects_bad_ratio(tmp_path: Path, robot: ChunkDataset) -> None:
    vlm = VLMDataset(write_vlm(tmp_path / "vlm", GOOD))
    for ratio in (-0.1, 1.0):
        with pytest.raises(ValueError, match="vlm_ratio"):
            MixtureDataset(robot, vlm, vlm_ratio=ratio, seed=0)
    assert MixtureDataset(robot, vlm, vlm_ratio=0.0, seed=0).is_vlm.sum() == 0
    only_robot = MixtureDataset(robot, None, vlm_ratio=0.0, seed=0)
    assert len(only_robot) == len(robot) and not only_robot[0]["is_vlm"]
    with pytest.raises(ValueError, match="needs a non-empty VLM dataset"):
        MixtureDataset(robot, None, vlm_ratio=0.2, seed=0)
    epoch0 = [mix_id for mix_id in MixtureDataset(robot, vlm, 0.25, seed=7).is_vlm.tolist()]
    mix = MixtureDataset(robot, vlm, 0.25, seed=7)
    mix.set_epoch(1)
    assert mix.is_vlm.tolist() != epoch0 and mix.is_vlm.sum() == 10
