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

"""camera_node: driver frames (any common encoding, raw or compressed) -> RGB frames at the model's size.

Why a separate node: decoding and resizing 3 cameras at 30-60 Hz is CPU work that must not share a GIL
with the policy's inference thread or the executor's 50 Hz timer; and it shrinks what crosses DDS to the
model's resolution. Conversion and resizing are ki_vla.data.images; this file is wiring.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from ki_vla.data.images import RESIZE_MODES, ImageDecodeError, resize_for_model
from ki_vla_ros.config import CameraNodeConfig
from ki_vla_ros.msgs import compressed_msg_to_rgb, cv_bridge_available, image_msg_to_rgb, rgb_to_image_msg
from ki_vla_ros.ros_util import (
    CAMERA_IN_QOS, CAMERA_OUT_QOS, Diagnostics, ThrottledLog, declare_config, now_sec, run_node,
    to_sec)
from ki_vla_ros.stats import Counter, RateMeter, Window


class CameraStream:
    """Per-camera state: counters and latency window for diagnostics."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rate = RateMeter()
        self.dropped = Counter()
        self.process_ms = Window(200)
        self.age_ms = Window(200)
        self.last_shape: tuple[int, ...] = ()
        self.last_encoding = ""


class CameraNode(Node):
    """Subscribes to each configured camera, converts to RGB, resizes, republishes with sensor-data QoS."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("camera_node", **kwargs)
        self.cfg = declare_config(self, CameraNodeConfig)
        if self.cfg.transport not in ("raw", "compressed"):
            raise ValueError(f"transport must be 'raw' or 'compressed', got {self.cfg.transport!r}")
        if self.cfg.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.cfg.resize_mode!r}")
        if self.cfg.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.cfg.image_size}")
        if not self.cfg.camera_names:
            raise ValueError("camera_names is empty")
        self.use_bridge = self.cfg.use_cv_bridge and cv_bridge_available()
        self.log = ThrottledLog(self)
        self.streams: dict[str, CameraStream] = {}
        self.diag = Diagnostics(self, self.cfg.diagnostics_period)
        for name in self.cfg.camera_names:
            stream = CameraStream(name)
            self.streams[name] = stream
            out_topic = self.cfg.output_topic.format(name=name)
            pub = self.create_publisher(Image, out_topic, CAMERA_OUT_QOS)
            in_topic = self.cfg.input_topic.format(name=name)
            if self.cfg.transport == "compressed":
                in_topic = in_topic.rstrip("/") + "/compressed"
                self.create_subscription(CompressedImage, in_topic,
                                         lambda m, s=stream, p=pub: self._on_frame(m, s, p, True), CAMERA_IN_QOS)
            else:
                self.create_subscription(Image, in_topic,
                                         lambda m, s=stream, p=pub: self._on_frame(m, s, p, False), CAMERA_IN_QOS)
            self.diag.add(f"camera {name}", lambda s=stream: self._report(s))
            self.get_logger().info(f"{name}: {in_topic} ({self.cfg.transport}) -> {out_topic} "
                                   f"{self.cfg.image_size}px {self.cfg.resize_mode}")
        self.get_logger().info(f"raw frame conversion: {'cv_bridge' if self.use_bridge else 'ki_vla.data.images'}")

    def _on_frame(self, msg: Image | CompressedImage, stream: CameraStream, pub: Any, compressed: bool) -> None:
        t0 = time.perf_counter()
        try:
            rgb = compressed_msg_to_rgb(msg) if compressed else image_msg_to_rgb(msg, self.use_bridge)
            out = resize_for_model(rgb, self.cfg.image_size, self.cfg.resize_mode)
        except (ImageDecodeError, ValueError) as exc:
            stream.dropped.inc(type(exc).__name__)
            self.log.warn(f"drop-{stream.name}", f"{stream.name}: dropped malformed frame: {exc}")
            return
        header = msg.header
        if header.stamp.sec == 0 and header.stamp.nanosec == 0:
            # Unstamped driver: stamp with receive time so downstream age checks still mean something.
            header.stamp = self.get_clock().now().to_msg()
            self.log.warn(f"nostamp-{stream.name}", f"{stream.name}: frame has no header stamp; using receive time")
        pub.publish(rgb_to_image_msg(out, header))
        now = now_sec(self)
        stream.rate.tick(now)
        stream.process_ms.add((time.perf_counter() - t0) * 1e3)
        stream.age_ms.add((now - to_sec(header.stamp)) * 1e3)
        stream.last_shape = rgb.shape
        stream.last_encoding = getattr(msg, "format", None) or getattr(msg, "encoding", "")

    def _report(self, s: CameraStream) -> tuple[int, str, dict[str, Any]]:
        now = now_sec(self)
        rate = s.rate.rate(now)
        kv: dict[str, Any] = {"rate_hz": rate, "frames": s.rate.total, "dropped": s.dropped.total(),
                              "input_shape": "x".join(map(str, s.last_shape)), "encoding": s.last_encoding}
        kv.update({f"process_ms_{k}": v for k, v in s.process_ms.percentiles().items()})
        kv.update({f"age_ms_{k}": v for k, v in s.age_ms.percentiles().items()})
        kv.update({f"dropped[{k}]": v for k, v in s.dropped.counts.items()})
        if s.rate.total == 0:
            return Diagnostics.STALE, "no frames received yet", kv
        if rate == 0.0:
            return Diagnostics.WARN, "no frames in the last 2 s", kv
        if s.dropped.total():
            return Diagnostics.WARN, f"{s.dropped.total()} malformed frame(s) dropped", kv
        return Diagnostics.OK, f"{rate:.1f} Hz", kv


def main(args: list[str] | None = None) -> int:
    """Console script `camera_node`."""
    return run_node(CameraNode, "camera_node", args)


if __name__ == "__main__":
    sys.exit(main())
