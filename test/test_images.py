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

"""ki_vla.data.images: every supported encoding decodes to the right RGB, matching a reference converter."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from ki_vla.data.images import (ENCODINGS, ImageDecodeError, compressed_to_rgb, raw_to_rgb, resize_for_model,
                                rgb_to_raw)

RNG = np.random.default_rng(0)


def smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth colour image: lossy chroma subsampling / demosaicing stays close to it."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w) + 60], axis=-1)
    return img.astype(np.uint8)


LOSSLESS = ["rgb8", "bgr8", "rgba8", "bgra8", "8UC3", "8UC4", "rgb16", "bgr16"]
GRAY = ["mono8", "8UC1", "mono16", "16UC1"]
LOSSY = ["yuv422", "uyvy", "yuv422_yuy2", "yuyv", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"]


@pytest.mark.parametrize("enc", LOSSLESS)
def test_lossless_roundtrip(enc):
    rgb = RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    data, step = rgb_to_raw(rgb, enc)
    out = raw_to_rgb(enc, 17, 23, step, data)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("enc", GRAY)
def test_gray_roundtrip(enc):
    rgb = smooth_rgb()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    data, step = rgb_to_raw(rgb, enc)
    out = raw_to_rgb(enc, *rgb.shape[:2], step, data)
    assert out.shape == rgb.shape
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


@pytest.mark.parametrize("enc", LOSSY)
def test_lossy_roundtrip_close(enc):
    rgb = smooth_rgb()
    data, step = rgb_to_raw(rgb, enc)
    out = raw_to_rgb(enc, *rgb.shape[:2], step, data)
    err = np.abs(out.astype(int) - rgb.astype(int))[2:-2, 2:-2]  # demosaic borders are approximate
    assert err.mean() < 4, (enc, err.mean())


@pytest.mark.parametrize("enc", LOSSLESS + GRAY + LOSSY)
def test_matches_reference_converter(enc):
    """rosbags-image implements cv_bridge's semantics without ROS; our decoder must agree with it."""
    image_mod = pytest.importorskip("rosbags.image")
    rgb = smooth_rgb()
    data, step = rgb_to_raw(rgb, enc)
    msg = SimpleNamespace(encoding=enc, height=rgb.shape[0], width=rgb.shape[1], step=step, data=data,
                          is_bigendian=False)
    if enc.startswith("8UC") or enc == "16UC1":
        ref_enc = {"8UC1": "mono8", "8UC3": "bgr8", "8UC4": "bgra8", "16UC1": "mono16"}[enc]
        msg.encoding = ref_enc
    ref = image_mod.image_to_cvimage(msg, "rgb8")
    ours = raw_to_rgb(enc, rgb.shape[0], rgb.shape[1], step, data)
    assert np.abs(ref.astype(int) - ours.astype(int)).max() <= 1


def test_big_endian_16bit_and_row_padding():
    gray16 = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    step = 7 * 2 + 6  # padded rows
    buf = np.zeros((5, step), np.uint8)
    buf[:, :14] = gray16.astype(">u2").view(np.uint8).reshape(5, 14)
    out = raw_to_rgb("mono16", 5, 7, step, buf.tobytes(), is_bigendian=True)
    expected = (gray16.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(encoding="weird"), "unsupported encoding"),
    (dict(height=0), "empty image"),
    (dict(step=10), "step"),
    (dict(data=b"\x00" * 10), "bytes"),
    (dict(encoding="yuv422", width=5, step=10), "even width"),
    (dict(height=100000, width=100000, step=300000), "exceeds"),
])
def test_malformed_raw_frames_raise(kwargs, match):
    args = dict(encoding="rgb8", height=4, width=4, step=12, data=b"\x00" * 48, is_bigendian=False)
    args.update(kwargs)
    with pytest.raises(ImageDecodeError, match=match):
        raw_to_rgb(**args)


def test_compressed_jpeg_and_png():
    rgb = smooth_rgb()
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(compressed_to_rgb("png", png.tobytes()), rgb)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_to_rgb("jpeg", jpg.tobytes())
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3
    with pytest.raises(ImageDecodeError):
        compressed_to_rgb("jpeg", b"not a jpeg")
    with pytest.raises(ImageDecodeError):
        compressed_to_rgb("jpeg", b"")


def test_resize_modes():
    img = np.full((480, 640, 3), 200, np.uint8)
    crop = resize_for_model(img, 224, "crop")
    pad = resize_for_model(img, 224, "pad")
    stretch = resize_for_model(img, (100, 50), "stretch")
    assert crop.shape == pad.shape == (224, 224, 3) and stretch.shape == (100, 50, 3)
    assert crop.min() == 200                       # no borders when cropping
    assert pad[0, 0, 0] == 0 and pad[112, 112, 0] == 200   # 4:3 into a square: black bars top and bottom
    bars = (pad[:, 112, 0] == 0).sum()
    assert bars == 224 - 168
    assert resize_for_model(img[:224, :224], 224) is not None
    with pytest.raises(ValueError):
        resize_for_model(img, 224, "zoom")


def test_every_encoding_listed_is_decodable():
    for enc, info in ENCODINGS.items():
        w = 4
        row = w * info.channels * np.dtype(info.dtype).itemsize
        out = raw_to_rgb(enc, 2, w, row, bytes(row * 2))
        assert out.shape == (2, w, 3) and out.dtype == np.uint8
