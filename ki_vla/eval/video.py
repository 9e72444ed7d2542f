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

"""Episode videos: RGB frames -> H.264 mp4 bytes (imageio's bundled ffmpeg), for reports."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np


def mp4_bytes(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """Encode (H, W, 3) uint8 frames; sizes are padded to even numbers as H.264 requires."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError("no frames to encode")
    h, w = frames[0].shape[:2]
    ph, pw = h + h % 2, w + w % 2
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=7,
                                ffmpeg_log_level="error", pixelformat="yuv420p") as writer:
            for f in frames:
                f = np.asarray(f, np.uint8)
                if f.shape[:2] != (ph, pw):
                    f = np.pad(f, ((0, ph - f.shape[0]), (0, pw - f.shape[1]), (0, 0)))
                writer.append_data(f)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)
