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

"""ki_vla_ros message helpers and stats (no DDS needed): conversions round-trip and reject malformed input;
cv_bridge and our conversion agree where cv_bridge is installed."""
import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header

from ki_vla.data.images import rgb_to_raw
from ki_vla.joints import JOINT_NAMES, LEFT_JOINTS
from ki_vla_ros.msgs import (chunk_to_trajectory, command_trajectory, cv_bridge_available, image_msg_to_rgb,
                             joint_state_positions, make_joint_state, rgb_to_image_msg, trajectory_to_arrays)
from ki_vla_ros.ros_util import duration_to_sec, to_duration_msg, to_sec, to_time_msg
from ki_vla_ros.stats import Counter, RateMeter, Window


def test_time_conversions():
    for t in (0.0, 1.5, 1795430000.123456789, 2.9999999999):
        assert to_sec(to_time_msg(t)) == pytest.approx(t, abs=1e-6)
        assert duration_to_sec(to_duration_msg(t)) == pytest.approx(t, abs=1e-6)
    assert to_time_msg(2.9999999999).nanosec < 1_000_000_000


def test_chunk_trajectory_roundtrip():
    actions = np.random.default_rng(0).normal(size=(50, 14))
    msg = chunk_to_trajectory(actions, JOINT_NAMES, 12.5, 0.02)
    assert to_sec(msg.header.stamp) == pytest.approx(12.5)
    names, times, pos = trajectory_to_arrays(msg)
    assert names == list(JOINT_NAMES)
    np.testing.assert_allclose(times, np.arange(50) * 0.02, atol=1e-9)
    np.testing.assert_allclose(pos, actions)
    msg.points[7].positions = [0.0] * 13
    with pytest.raises(ValueError, match="point 7"):
        trajectory_to_arrays(msg)


def test_command_trajectory_semantics():
    msg = command_trajectory(LEFT_JOINTS, np.zeros((3, 7)), 0.02)
    assert msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 0
    assert [duration_to_sec(p.time_from_start) for p in msg.points] == pytest.approx([0.02, 0.04, 0.06])


def test_joint_state_positions():
    q = np.arange(14.0)
    msg = make_joint_state(JOINT_NAMES[::-1], q[::-1], 1.0)
    msg.name.append("extra_joint")
    msg.position.append(99.0)
    np.testing.assert_allclose(joint_state_positions(msg, JOINT_NAMES), q)
    with pytest.raises(ValueError, match="lacks"):
        joint_state_positions(JointState(name=["left_waist"], position=[0.0]), JOINT_NAMES)
    with pytest.raises(ValueError, match="names but"):
        joint_state_positions(JointState(name=list(JOINT_NAMES), position=[0.0]), JOINT_NAMES)
    bad = make_joint_state(JOINT_NAMES, q, 1.0)
    bad.position[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        joint_state_positions(bad, JOINT_NAMES)


def test_image_msg_roundtrip():
    rgb = np.random.default_rng(1).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    msg = rgb_to_image_msg(rgb, Header())
    assert (msg.height, msg.width, msg.step, msg.encoding) == (6, 10, 30, "rgb8")
    np.testing.assert_array_equal(image_msg_to_rgb(msg, use_cv_bridge=False), rgb)


@pytest.mark.skipif(not cv_bridge_available(), reason="ROS 2 cv_bridge not installed (pip-only machine)")
@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "bayer_rggb8"])
def test_cv_bridge_agrees_with_our_conversion(enc):
    y, x = np.mgrid[0:24, 0:32]
    rgb = np.stack([x * 8, y * 10, x + y + 40], axis=-1).astype(np.uint8)
    data, step = rgb_to_raw(rgb, enc)
    msg = Image(height=24, width=32, encoding=enc, step=step, data=data)
    ours = image_msg_to_rgb(msg, use_cv_bridge=False)
    theirs = image_msg_to_rgb(msg, use_cv_bridge=True)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_stats():
    r = RateMeter(window=1.0)
    for k in range(51):
        r.tick(k * 0.02)
    assert r.rate(1.0) == pytest.approx(50.0, rel=0.05)
    assert r.rate(5.0) == 0.0 and r.total == 51
    w = Window(size=3)
    assert np.isnan(w.percentiles()["p50"])
    for v in (1, 2, 3, 100):
        w.add(v)
    assert len(w) == 3 and w.percentiles()["p50"] == 3 and w.max() == 100
    c = Counter()
    c.inc("a"), c.inc("a"), c.inc("b", 3)
    assert c.counts == {"a": 2, "b": 3} and c.total() == 5


def test_parameter_coercion():
    from ki_vla_ros.ros_util import _coerce

    assert _coerce("hz", 50, 50.0) == 50.0 and isinstance(_coerce("hz", 50, 50.0), float)
    assert _coerce("n", 2.0, 1) == 2
    assert _coerce("s", [1, 2], [1.0]) == [1.0, 2.0]
    assert _coerce("names", ["a"], ["x"]) == ["a"]
    for name, value, default in (("hz", "fast", 50.0), ("n", 2.5, 1), ("flag", 1, True), ("s", ["a"], [1.0]),
                                 ("t", 3, "topic"), ("hz", True, 50.0)):
        with pytest.raises(ValueError, match=name):
            _coerce(name, value, default)
