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

"""camera_node over real DDS: every encoding round-trips, compressed works, malformed frames are dropped
and reported while the node keeps running."""
import time

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image

from ki_vla.data.images import raw_to_rgb, resize_for_model, rgb_to_raw
from ki_vla_ros.camera_node import CameraNode
from ki_vla_ros.msgs import rgb_to_image_msg
from ki_vla_ros.ros_util import CAMERA_OUT_QOS, RELIABLE_QOS
from ki_vla_ros.testing import Collector, ros_harness, wait_for

ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "yuv422_yuy2", "bayer_rggb8", "8UC3"]
SIZE = 32


def frame(h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w) + 60], axis=-1).astype(np.uint8)


def camera(h, transport="raw"):
    return h.add(CameraNode(context=h.context, parameter_overrides=[
        Parameter("camera_names", value=["cam_test"]), Parameter("image_size", value=SIZE),
        Parameter("transport", value=transport), Parameter("diagnostics_period", value=0.2)]))


def publish_until(pub, msg, col, n=1, timeout=5.0):
    """Re-publish until the collector has n more messages (discovery takes a moment; best-effort may drop)."""
    start = len(col)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(col) < start + n:
        pub.publish(msg)
        time.sleep(0.05)
    return len(col) >= start + n


def test_every_encoding_roundtrips_through_camera_node():
    with ros_harness() as h:
        camera(h)
        test = h.node("cam_test_driver")
        pub = test.create_publisher(Image, "/cam_test/image_raw", RELIABLE_QOS)  # a reliable driver
        out = Collector(test, Image, "/ki_vla/camera/cam_test", CAMERA_OUT_QOS)
        rgb = frame()
        for enc in ENCODINGS:
            data, step = rgb_to_raw(rgb, enc)
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=enc, step=step, data=data)
            msg.header.stamp.sec = 1000 + ENCODINGS.index(enc)
            msg.header.frame_id = enc
            out.clear()
            assert publish_until(pub, msg, out), f"no output for {enc}"
            got = out.msgs[-1]
            assert got.header.frame_id == enc and got.header.stamp.sec == msg.header.stamp.sec
            assert (got.height, got.width, got.encoding) == (SIZE, SIZE, "rgb8")
            img = raw_to_rgb(got.encoding, got.height, got.width, got.step, got.data)
            expected = resize_for_model(raw_to_rgb(enc, rgb.shape[0], rgb.shape[1], step, data), SIZE, "pad")
            np.testing.assert_array_equal(img, expected)
            if enc in ("rgb8", "bgr8", "rgba8", "bgra8", "8UC3"):
                np.testing.assert_array_equal(img, resize_for_model(rgb, SIZE, "pad"))


def test_compressed_transport_and_best_effort_driver():
    with ros_harness() as h:
        camera(h, transport="compressed")
        test = h.node("cam_test_driver")
        from ki_vla_ros.ros_util import CAMERA_IN_QOS
        pub = test.create_publisher(CompressedImage, "/cam_test/image_raw/compressed", CAMERA_IN_QOS)
        out = Collector(test, Image, "/ki_vla/camera/cam_test", CAMERA_OUT_QOS)
        rgb = frame()
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        msg = CompressedImage(format="png", data=png.tobytes())
        msg.header.stamp.sec = 5
        assert publish_until(pub, msg, out)
        got = out.msgs[-1]
        np.testing.assert_array_equal(raw_to_rgb("rgb8", SIZE, SIZE, got.step, got.data),
                                      resize_for_model(rgb, SIZE, "pad"))


def test_malformed_frames_dropped_counted_reported():
    with ros_harness() as h:
        camera(h)
        test = h.node("cam_test_driver")
        pub = test.create_publisher(Image, "/cam_test/image_raw", RELIABLE_QOS)
        out = Collector(test, Image, "/ki_vla/camera/cam_test", CAMERA_OUT_QOS)
        diags = Collector(test, DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        good = rgb_to_image_msg(frame(), Image().header)
        good.header.stamp.sec = 7
        assert publish_until(pub, good, out)
        bad = [Image(height=4, width=4, encoding="rgb8", step=12, data=b"\x00" * 5),
               Image(height=4, width=4, encoding="weird", step=12, data=b"\x00" * 48),
               Image(height=0, width=4, encoding="rgb8", step=12, data=b"")]
        n_before = len(out)
        for m in bad * 3:
            pub.publish(m)
            time.sleep(0.01)

        def dropped():
            for d in diags.msgs:
                for s in d.status:
                    if s.name.endswith("camera cam_test"):
                        kv = {v.key: v.value for v in s.values}
                        if int(kv["dropped"]) >= 3:
                            return True
            return False

        assert wait_for(dropped, 15.0), "diagnostics never reported the dropped frames"
        assert len(out) == n_before      # nothing malformed was forwarded
        assert publish_until(pub, good, out)  # and the node still works
