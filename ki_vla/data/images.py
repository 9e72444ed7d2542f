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

"""Camera frames -> model-ready RGB arrays, with numpy and OpenCV only (no ROS, no cv_bridge).

Why this exists: the pip-only machines this project targets have no ROS 2 cv_bridge, yet camera drivers
publish many raw encodings (rgb8, bgr8, YUV 4:2:2, Bayer, 16-bit mono...) and compressed JPEG/PNG. The
ROS nodes hand the raw message fields (encoding, size, step, bytes) to these functions, so the same code
serves live cameras, rosbag conversion and tests. Semantics follow cv_bridge (and rosbags-image, which
the tests compare against): 16-bit data is scaled to 8 bits by 255/65535, Bayer names map to OpenCV's
shifted pattern names, `yuv422` is UYVY and `yuv422_yuy2` is YUYV.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


class ImageDecodeError(ValueError):
    """A frame that cannot be turned into an RGB image (bad size, unknown encoding, corrupt bytes)."""


@dataclass(frozen=True)
class EncodingInfo:
    """How one ROS image encoding is laid out in memory and how OpenCV turns it into RGB."""

    dtype: str          # numpy element type of one channel
    channels: int       # channels per pixel in the buffer (YUV 4:2:2 is 2 bytes per pixel)
    to_rgb: int | None  # cv2.cvtColor code producing RGB, None when already RGB


ENCODINGS: dict[str, EncodingInfo] = {
    "rgb8": EncodingInfo("uint8", 3, None),
    "bgr8": EncodingInfo("uint8", 3, cv2.COLOR_BGR2RGB),
    "rgba8": EncodingInfo("uint8", 4, cv2.COLOR_RGBA2RGB),
    "bgra8": EncodingInfo("uint8", 4, cv2.COLOR_BGRA2RGB),
    "mono8": EncodingInfo("uint8", 1, cv2.COLOR_GRAY2RGB),
    "8UC1": EncodingInfo("uint8", 1, cv2.COLOR_GRAY2RGB),
    "8UC3": EncodingInfo("uint8", 3, cv2.COLOR_BGR2RGB),   # OpenCV's default channel order is BGR
    "8UC4": EncodingInfo("uint8", 4, cv2.COLOR_BGRA2RGB),
    "rgb16": EncodingInfo("uint16", 3, None),
    "bgr16": EncodingInfo("uint16", 3, cv2.COLOR_BGR2RGB),
    "rgba16": EncodingInfo("uint16", 4, cv2.COLOR_RGBA2RGB),
    "bgra16": EncodingInfo("uint16", 4, cv2.COLOR_BGRA2RGB),
    "mono16": EncodingInfo("uint16", 1, cv2.COLOR_GRAY2RGB),
    "16UC1": EncodingInfo("uint16", 1, cv2.COLOR_GRAY2RGB),
    # ROS names Bayer patterns by the first row; OpenCV by the second row's 2x2 offset, hence the swap.
    "bayer_rggb8": EncodingInfo("uint8", 1, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": EncodingInfo("uint8", 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": EncodingInfo("uint8", 1, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": EncodingInfo("uint8", 1, cv2.COLOR_BayerGB2RGB),
    "bayer_rggb16": EncodingInfo("uint16", 1, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr16": EncodingInfo("uint16", 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg16": EncodingInfo("uint16", 1, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg16": EncodingInfo("uint16", 1, cv2.COLOR_BayerGB2RGB),
    "yuv422": EncodingInfo("uint8", 2, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": EncodingInfo("uint8", 2, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": EncodingInfo("uint8", 2, cv2.COLOR_YUV2RGB_YUY2),
    "yuyv": EncodingInfo("uint8", 2, cv2.COLOR_YUV2RGB_YUY2),
}

# Raw frames larger than this are refused before touching the buffer: a corrupt header must not make us
# allocate gigabytes.
MAX_PIXELS = 8192 * 8192

RESIZE_MODES = ("crop", "pad", "stretch")


def supported_encodings() -> tuple[str, ...]:
    """The raw encodings `raw_to_rgb` understands (what camera_node advertises in its diagnostics)."""
    return tuple(ENCODINGS)


def raw_to_rgb(encoding: str, height: int, width: int, step: int, data: bytes | bytearray | memoryview
               | np.ndarray, is_bigendian: bool = False) -> np.ndarray:
    """Decode the fields of a sensor_msgs/Image into a contiguous RGB uint8 array (H, W, 3).

    Every field comes from outside the process, so each is checked and a mismatch raises ImageDecodeError
    with the reason (the caller counts and reports it; it never crashes a node). Row padding (step larger
    than width * bytes per pixel) is honoured, as drivers with aligned rows produce it.
    """
    info = ENCODINGS.get(encoding)
    if info is None:
        raise ImageDecodeError(f"unsupported encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image {width}x{height}")
    if height * width > MAX_PIXELS:
        raise ImageDecodeError(f"image {width}x{height} exceeds {MAX_PIXELS} pixels")
    if info.channels == 2 and width % 2:
        raise ImageDecodeError(f"{encoding} needs an even width, got {width}")
    itemsize = np.dtype(info.dtype).itemsize
    row_bytes = width * info.channels * itemsize
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} < {row_bytes} bytes per row for {width} px of {encoding}")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buf.size < step * (height - 1) + row_bytes:
        raise ImageDecodeError(f"data has {buf.size} bytes, {encoding} {width}x{height} step {step} needs "
                               f"{step * height}")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(step, 1))
    dtype = np.dtype(info.dtype)
    if itemsize > 1:
        dtype = dtype.newbyteorder(">" if is_bigendian else "<")
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, info.channels)
    if pixels.dtype != np.uint8:
        # Same scaling as cv_bridge: full 16-bit range onto full 8-bit range (astype also fixes byte order).
        pixels = (pixels.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if info.channels == 1:
        pixels = pixels[:, :, 0]
    if info.to_rgb is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels, info.to_rgb)


def compressed_to_rgb(fmt: str, data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG, as image_transport writes them) to RGB uint8.

    `fmt` is only used in error messages: OpenCV sniffs the container from the bytes, which is what a
    driver's format string ("jpeg", "bgr8; jpeg compressed bgr8", "png") cannot be trusted to describe.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buf.size == 0:
        raise ImageDecodeError(f"empty compressed image (format {fmt!r})")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageDecodeError(f"OpenCV could not decode {buf.size} bytes of compressed image (format {fmt!r})")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def rgb_to_raw(rgb: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """Encode an RGB uint8 image into `encoding`; returns (data, step).

    Used to publish processed frames (rgb8) and, in tests and the sim, to produce every encoding a driver
    might send. Lossy encodings (mono, YUV 4:2:2 chroma, Bayer) lose what the format cannot hold.
    """
    rgb = check_rgb(rgb)
    h, w = rgb.shape[:2]
    if encoding == "rgb8":
        out = rgb
    elif encoding in ("bgr8", "8UC3"):
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "rgba8":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    elif encoding in ("bgra8", "8UC4"):
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    elif encoding in ("mono8", "8UC1"):
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding in ("mono16", "16UC1"):
        out = (cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257).astype("<u2")
    elif encoding in ("rgb16", "bgr16"):
        src = rgb if encoding == "rgb16" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        out = (src.astype(np.uint16) * 257).astype("<u2")
    elif encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        if w % 2:
            raise ImageDecodeError(f"{encoding} needs an even width, got {w}")
        # BT.601 video range, the inverse of what OpenCV (and cv_bridge) assume when decoding 4:2:2.
        f = rgb.astype(np.float32)
        r, g, b = f[..., 0], f[..., 1], f[..., 2]
        yf = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b
        uf = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b
        vf = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b
        u2 = np.clip(np.rint((uf[:, 0::2] + uf[:, 1::2]) / 2), 0, 255).astype(np.uint8)
        v2 = np.clip(np.rint((vf[:, 0::2] + vf[:, 1::2]) / 2), 0, 255).astype(np.uint8)
        y = np.clip(np.rint(yf), 0, 255).astype(np.uint8)
        packed = np.empty((h, w // 2, 4), np.uint8)
        if encoding in ("yuv422", "uyvy"):
            packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = u2, y[:, 0::2], v2, y[:, 1::2]
        else:
            packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = y[:, 0::2], u2, y[:, 1::2], v2
        out = packed.reshape(h, w * 2)
    elif encoding.startswith("bayer_") and encoding.endswith("8"):
        pattern = encoding[len("bayer_"):-1]          # e.g. "rggb": row0 = R G, row1 = G B
        chan = {"r": 0, "g": 1, "b": 2}
        out = np.empty((h, w), np.uint8)
        for dy in (0, 1):
            for dx in (0, 1):
                out[dy::2, dx::2] = rgb[dy::2, dx::2, chan[pattern[dy * 2 + dx]]]
    else:
        raise ImageDecodeError(f"cannot encode to {encoding!r}")
    out = np.ascontiguousarray(out)
    return out.tobytes(), out.strides[0]


def check_rgb(img: np.ndarray) -> np.ndarray:
    """Return `img` if it is an RGB uint8 (H, W, 3) array, else raise ImageDecodeError saying why."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ImageDecodeError(f"expected uint8 (H, W, 3), got {getattr(img, 'dtype', type(img))} "
                               f"{getattr(img, 'shape', '')}")
    return img


def resize_for_model(rgb: np.ndarray, size: int | tuple[int, int], mode: str = "crop") -> np.ndarray:
    """Fit an RGB image to the model's (height, width) without distorting it unless asked to.

    mode "crop": scale so the image covers the target, then center-crop (no borders, loses the edges);
    "pad": scale so it fits inside, then pad with black (keeps the whole view, as pi0/openpi's
    resize_with_pad does); "stretch": plain resize. INTER_AREA when shrinking avoids aliasing.
    """
    check_rgb(rgb)
    th, tw = (size, size) if isinstance(size, int) else size
    if th <= 0 or tw <= 0:
        raise ValueError(f"target size must be positive, got {th}x{tw}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} not in {RESIZE_MODES}")
    h, w = rgb.shape[:2]
    if (h, w) == (th, tw):
        return rgb
    if mode == "stretch":
        interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR
        return cv2.resize(rgb, (tw, th), interpolation=interp)
    scale = max(th / h, tw / w) if mode == "crop" else min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "crop":
        nh, nw = max(nh, th), max(nw, tw)
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    scaled = cv2.resize(rgb, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else rgb
    if mode == "crop":
        y0, x0 = (nh - th) // 2, (nw - tw) // 2
        return np.ascontiguousarray(scaled[y0:y0 + th, x0:x0 + tw])
    out = np.zeros((th, tw, 3), np.uint8)
    nh, nw = min(nh, th), min(nw, tw)
    y0, x0 = (th - nh) // 2, (tw - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = scaled[:nh, :nw]
    return out
