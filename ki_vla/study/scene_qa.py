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

"""Co-training samples made from the sim (the `ki_cotrain` variant): questions about a transfer_color scene answered
from its ground truth, written in `ki_vla.data.cotrain`'s folder format.

Why from the sim: no VQA set is available offline, and scene questions whose answers need the image (which cube
is nearer which arm) exercise the same vision-language grounding that the instruction "transfer the red cube"
needs. The scenes come from seeds disjoint from the demonstrations' (`SEED_OFFSET`), so no training episode's first
frame is repeated as a question.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ki_vla.atomic import atomic_dir
from ki_vla.data.cotrain import SAMPLES_FILE
from ki_vla.sim.scenes import COLOR_BODIES, BimanualSim

SEED_OFFSET = 500_000  # scene seeds for questions start here (demonstrations use small seeds)


def scene_questions(red: np.ndarray, blue: np.ndarray, left_base: np.ndarray,
                    right_base: np.ndarray) -> list[tuple[str, str]]:
    """(prompt, answer) pairs true of a scene with the red and blue cube at `red`, `blue` (world positions)."""
    def nearer(base: np.ndarray) -> str:
        return "red" if np.linalg.norm(red[:2] - base[:2]) < np.linalg.norm(blue[:2] - base[:2]) else "blue"

    return [
        ("How many cubes are on the table?", "two"),
        ("What colours are the cubes?", "red and blue"),
        ("Which cube is closer to the left arm, the red one or the blue one?", nearer(left_base)),
        ("Which cube is closer to the right arm, the red one or the blue one?", nearer(right_base)),
    ]


def write_scene_qa(folder: str | Path, scenes: int, image_size: tuple[int, int], camera: str = "cam_high",
                   seed: int = 0, progress: bool = True) -> int:
    """Render `scenes` transfer_color scenes from `camera` and write every scene's questions (atomically: the
    folder appears complete or not at all). Returns the number of samples written."""
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    folder = Path(folder)
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        (tmp / "images").mkdir(parents=True)
        lines = []
        with BimanualSim("transfer_color", seed=seed + SEED_OFFSET, image_size=image_size, cameras=(camera,)) as env:
            left_base = env.body_pose("vx300s_left")[0]
            right_base = env.body_pose("vx300s_right")[0]
            for k in tqdm(range(scenes), desc="scene questions", disable=not progress):
                obs = env.reset(seed=seed + SEED_OFFSET + k)
                pos = env.object_positions()
                name = f"images/{k:05d}.png"
                cv2.imwrite(str(tmp / name), cv2.cvtColor(obs["images"][camera], cv2.COLOR_RGB2BGR))
                for prompt, answer in scene_questions(pos[COLOR_BODIES["red"]], pos[COLOR_BODIES["blue"]],
                                                      left_base, right_base):
                    lines.append(json.dumps({"image": name, "prompt": prompt, "answer": answer}))
        (tmp / SAMPLES_FILE).write_text("\n".join(lines) + "\n")
        count = len(lines)

    atomic_dir(folder, write)
    return count
