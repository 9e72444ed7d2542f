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

"""VLM co-training data (captions, VQA, plain text) mixed with robot samples at a fixed ratio.

Knowledge insulation keeps training the backbone on vision-language data so it does not forget it while
learning actions; these samples carry no actions (action mask all False) and are trained with the text loss
only.

Folder format (documented contract)::

    my_vlm_data/
      samples.jsonl        one JSON object per line
      images/0001.png      any image cv2 can read (png, jpg, ...), paths relative to the folder

    {"image": "images/0001.png", "prompt": "What is on the table?", "answer": "A red cube."}
    {"image": null, "prompt": "Translate 'cube' to French.", "answer": "cube"}      # text only
    {"image": "images/0002.jpg", "prompt": "Caption:", "answer": "Two robot arms above a table."}

Keys: `prompt` (str, may be empty for captioning) and `answer` (non-empty str) are required; `image` is a
relative path or null/absent. Blank lines and lines starting with `#` are ignored. Errors name the file and
line.

`MixtureDataset(robot_ds, vlm_ds, vlm_ratio, seed)` is a map-style dataset whose order is already shuffled
(iterate it with `shuffle=False`; call `set_epoch(e)` for the next epoch's order, before creating persistent
DataLoader workers, which hold their own copy): exactly `round(len * vlm_ratio)` of its items are VLM samples, placed
and chosen deterministically from `seed` (and `set_epoch`). Every item has the robot sample's keys (see
`ki_vla.data.samples`) plus `answer` (str, "" for robot samples) and `is_vlm` (bool). A VLM sample's image goes
into the first camera slot (other cameras zero with `image_mask` False); its state/actions are zeros with
`action_mask` all False and `action_is_pad` all True; `instruction` is the prompt.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ki_vla.data.samples import ChunkDataset

SAMPLES_FILE = "samples.jsonl"


@dataclass(frozen=True)
class VLMRecord:
    """One line of samples.jsonl."""

    image: str | None
    prompt: str
    answer: str


class VLMDataset(Dataset):
    """VLM samples from a folder in the documented format; items are
    {"image": uint8 (H, W, 3) RGB array or None, "prompt": str, "answer": str}."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        path = self.folder / SAMPLES_FILE
        if not path.is_file():
            raise ValueError(f"VLM dataset {self.folder} has no {SAMPLES_FILE}")
        self.records: list[VLMRecord] = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                self.records.append(self._parse(path, n, text))
        if not self.records:
            raise ValueError(f"{path} holds no samples")

    def _parse(self, path: Path, n: int, text: str) -> VLMRecord:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from exc
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path}:{n}: each line must be a JSON object")
        prompt, answer, image = obj.get("prompt"), obj.get("answer"), obj.get("image")
        if not isinstance(prompt, str):
            raise ValueError(f"{path}:{n}: 'prompt' must be a string")
        if not isinstance(answer, str) or not answer:
            raise ValueError(f"{path}:{n}: 'answer' must be a non-empty string")
        if image is not None:
            if not isinstance(image, str) or not image:
                raise ValueError(f"{path}:{n}: 'image' must be a relative path or null")
            if Path(image).is_absolute() or ".." in Path(image).parts:
                raise ValueError(f"{path}:{n}: 'image' must be a path inside {self.folder}, got {image!r}")
            if not (self.folder / image).is_file():
                raise ValueError(f"{path}:{n}: image {image!r} does not exist in {self.folder}")
        return VLMRecord(image, prompt, answer)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, rel: str) -> np.ndarray:
        """Read an image of the folder as RGB uint8."""
        img = cv2.imread(str(self.folder / rel), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"VLM image {self.folder / rel} cannot be decoded")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        return {
            "image": self.load_image(rec.image) if rec.image else None,
            "prompt": rec.prompt,
            "answer": rec.answer,
        }


class MixtureDataset(Dataset):
    """Robot chunk samples and VLM samples at `vlm_ratio`, in a seeded, pre-shuffled order."""

    def __init__(
        self,
        robot_ds: ChunkDataset,
        vlm_ds: VLMDataset | None,
        vlm_ratio: float,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        if not 0.0 <= vlm_ratio < 1.0:
            raise ValueError(f"vlm_ratio must be in [0, 1), got {vlm_ratio}")
        if vlm_ratio > 0 and (vlm_ds is None or len(vlm_ds) == 0):
            raise ValueError("vlm_ratio > 0 needs a non-empty VLM dataset")
        if len(robot_ds) == 0:
            raise ValueError("the robot dataset is empty")
        self.robot_ds = robot_ds
        self.vlm_ds = vlm_ds
        self.vlm_ratio = float(vlm_ratio)
        self.seed = int(seed)
        # Default length: every robot sample once per epoch, plus the VLM share on top.
        self.length = int(length) if length is not None else int(round(len(robot_ds) / (1.0 - self.vlm_ratio)))
        if self.length <= 0:
            raise ValueError(f"length must be positive, got {self.length}")
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Re-draw placement and order for `epoch` (deterministic from (seed, epoch))."""
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        n_vlm = int(round(self.length * self.vlm_ratio))
        self.is_vlm = np.zeros(self.length, dtype=bool)
        self.is_vlm[rng.permutation(self.length)[:n_vlm]] = True
        robot_order = self.robot_ds.block_order(self.seed, self.epoch)
        n_records = len(self.vlm_ds) if self.vlm_ds is not None else 0
        vlm_order = rng.permutation(n_records) if n_records else np.zeros(0, dtype=np.int64)
        self._source = np.empty(self.length, dtype=np.int64)
        r = v = 0
        for i in range(self.length):
            if self.is_vlm[i]:
                self._source[i] = vlm_order[v % len(vlm_order)]
                v += 1
            else:
                self._source[i] = robot_order[r % len(robot_order)]
                r += 1

    def __len__(self) -> int:
        return self.length

    def _vlm_sample(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        cams = self.robot_ds.camera_names
        size = self.robot_ds.image_size
        h, w = size if size is not None else (rec["image"].shape[:2] if rec["image"] is not None else (1, 1))
        images: dict[str, torch.Tensor] = {}
        mask: dict[str, torch.Tensor] = {}
        for k, cam in enumerate(cams):
            img = np.zeros((h, w, 3), dtype=np.uint8)
            has = k == 0 and rec["image"] is not None
            if has:
                img = cv2.resize(rec["image"], (w, h), interpolation=cv2.INTER_AREA)
            t = torch.from_numpy(img)
            if self.robot_ds.float_images:
                t = t.permute(2, 0, 1).float().div_(255.0)
            images[cam] = t
            mask[cam] = torch.tensor(bool(has))
        horizon = self.robot_ds.horizon
        return {
            "images": images,
            "image_mask": mask,
            "state": torch.zeros(self.robot_ds.state_dim, dtype=torch.float32),
            "actions": torch.zeros(horizon, self.robot_ds.action_dim, dtype=torch.float32),
            "action_is_pad": torch.ones(horizon, dtype=torch.bool),
            "action_mask": torch.zeros(horizon, dtype=torch.bool),
            "instruction": rec["prompt"],
            "answer": rec["answer"],
            "is_vlm": True,
            "episode_index": -1,
            "frame_index": -1,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"mixture index {index} out of range [0, {self.length})")
        src = int(self._source[index])
        if self.is_vlm[index]:
            assert self.vlm_ds is not None  # guaranteed by the ratio check in __init__
            return self._vlm_sample(self.vlm_ds[src])
        sample = self.robot_ds[src]
        sample["answer"] = ""
        sample["is_vlm"] = False
        return sample
