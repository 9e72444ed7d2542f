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

"""MP4 video encoding and timestamp-addressed decoding with PyAV, as LeRobot datasets store camera streams.

LeRobot v3 concatenates all episodes of one camera into one mp4 and addresses an episode by
`[from_timestamp, to_timestamp)` inside it; v2.1 keeps one mp4 per episode. Both are read here the same way:
decode from a seek point and pick, for each wanted timestamp, the decoded frame nearest to it (within a
tolerance), because encoders and concatenation tools do not promise that frame `i` sits at exactly `i / fps`.

LeRobot writes AV1 (libsvtav1, yuv420p, GOP 2) by default; we prefer the same codec when this PyAV build can
encode it and fall back to H.264, then MPEG-4 part 2, so a dataset written here is readable by LeRobot and
vice versa (decoding whatever codec the file carries).
"""
from __future__ import annotations

import fractions
import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

# SVT-AV1 prints a banner of ~20 lines per stream to stderr; keep errors only unless the user asked otherwise.
os.environ.setdefault("SVT_LOG", "1")

# Preference order: (PyAV encoder name, codec name recorded in info.json, encoder options).
# GOP 2 matches LeRobot's default: a seek never has to decode more than one extra frame.
_ENCODERS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("libsvtav1", "av1", {"preset": "10", "crf": "30", "g": "2"}),
    ("libaom-av1", "av1", {"cpu-used": "8", "crf": "30", "g": "2"}),
    ("libx264", "h264", {"preset": "veryfast", "crf": "18", "g": "2"}),
    ("mpeg4", "mpeg4", {"g": "2"}),  # bitrate set per resolution in VideoEncoder
)


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001 - PyAV raises different types across versions for unknown codecs
        return False


def _has_decoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
        return True
    except Exception:  # noqa: BLE001
        return False


def available_encoder(preferred: str | None = None) -> tuple[str, str, dict[str, str]]:
    """The encoder to write with: `preferred` (an encoder or codec name) if usable, else the best available.

    Returns (encoder name, codec name for info.json, encoder options).
    """
    candidates = list(_ENCODERS)
    if preferred is not None:
        chosen = [c for c in candidates if preferred in (c[0], c[1])]
        if not chosen:
            if not _has_encoder(preferred):
                raise ValueError(f"video codec {preferred!r} has no encoder in this PyAV build")
            return preferred, preferred, {"g": "2"}
        candidates = chosen
    for encoder, codec, options in candidates:
        if _has_encoder(encoder):
            return encoder, codec, dict(options)
    raise ValueError(f"no usable video encoder in this PyAV build (tried {[c[0] for c in candidates]})")


def av1_support() -> dict[str, bool]:
    """Whether this PyAV build can decode and encode AV1 (LeRobot's default dataset codec)."""
    return {
        "decode": any(_has_decoder(n) for n in ("libdav1d", "libaom-av1", "av1")),
        "encode": any(_has_encoder(n) for n in ("libsvtav1", "libaom-av1")),
    }


class VideoEncoder:
    """Streams RGB frames into one mp4 with pts = frame number at `fps`, so frame i is at time i / fps.

    Frames may come from several episodes; the caller records each episode's first/last frame time.
    """

    def __init__(self, path: Path, fps: int, width: int, height: int, codec: str | None = None) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"video frames must have even width and height for yuv420p, got {width}x{height}")
        self.path = Path(path)
        self.fps = int(fps)
        self.width = width
        self.height = height
        encoder, self.codec, options = available_encoder(codec)
        if encoder == "mpeg4" and "b" not in options:
            # MPEG-4 part 2 is rate-controlled; its default 200 kb/s turns small P-frame changes into copies of the
            # keyframe. ~1 bit per pixel keeps frames distinct and close to the source.
            options["b"] = str(max(2_000_000, width * height * self.fps))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(encoder, rate=self.fps)
        self._stream.width = width
        self._stream.height = height
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = fractions.Fraction(1, self.fps)
        self._stream.options = options
        self.pix_fmt = "yuv420p"
        self.num_frames = 0
        self.bytes_written = 0

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self.bytes_written += packet.size
            self._container.mux(packet)

    def add(self, frame: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 RGB frame."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"video frame must be uint8 {(self.height, self.width, 3)}, got {frame.dtype} {frame.shape}"
            )
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.num_frames
        self._mux(self._stream.encode(vf))
        self.num_frames += 1

    @property
    def duration_s(self) -> float:
        """Time of the frame that would come next: the to_timestamp of everything added so far."""
        return self.num_frames / self.fps

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent)."""
        if self._container is None:
            return
        try:
            self._mux(self._stream.encode())
        finally:
            self._container.close()
            self._container = None


def probe_codec(path: Path) -> str:
    """The codec name of the first video stream of an mp4."""
    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.name


def decode_frames(
    path: Path,
    timestamps: Sequence[float] | np.ndarray,
    tolerance_s: float,
) -> np.ndarray:
    """Decode the frames nearest to `timestamps` (seconds, ascending) from one video file.

    Decodes once from a keyframe at or before the first timestamp up to the last, so an episode costs one
    sequential pass. Raises ValueError when a timestamp has no frame within `tolerance_s` (a dataset whose
    meta/episodes timestamps do not match its video), naming the file and the time.
    Returns (N, H, W, 3) uint8 RGB.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.size == 0:
        raise ValueError(f"no timestamps requested from {path}")
    if np.any(np.diff(ts) < 0):
        raise ValueError(f"timestamps requested from {path} must be ascending")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video file {path} does not exist")
    first, last = float(ts[0]), float(ts[-1])
    out: np.ndarray | None = None
    best = np.full(ts.size, np.inf)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base
            if first > tolerance_s:
                container.seek(max(0, int((first - tolerance_s) / tb)), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb)
                if t < first - tolerance_s:
                    continue
                if t > last + tolerance_s:
                    break
                # Frames are near-uniform; only the few wanted timestamps around t can claim this frame.
                lo = int(np.searchsorted(ts, t - tolerance_s, side="left"))
                hi = int(np.searchsorted(ts, t + tolerance_s, side="right"))
                if lo >= hi:
                    continue
                dist = np.abs(ts[lo:hi] - t)
                better = dist < best[lo:hi]
                if not better.any():
                    continue
                image = frame.to_ndarray(format="rgb24")
                if out is None:
                    out = np.empty((ts.size, *image.shape), dtype=np.uint8)
                idx = np.nonzero(better)[0] + lo
                out[idx] = image
                best[idx] = dist[better]
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot decode video {path}: {exc}") from exc
    missing = np.nonzero(~np.isfinite(best))[0]
    if out is None or missing.size:
        at = float(ts[missing[0]]) if missing.size else first
        raise ValueError(
            f"video {path} has no frame within {tolerance_s:.4f}s of t={at:.4f}s "
            f"({missing.size} of {ts.size} requested timestamps missing)"
        )
    return out
