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

"""Malformed and adversarial messages for every input topic type of the graph (the reliability campaign).

Each generator yields (case, message): `case` names the defect, so a campaign can say which kinds it tried and a
failure can be reproduced from (seed, index). Messages are what a broken driver, a buggy client or a hostile
publisher can really put on the wire: rosidl's type checks (uint32 fields, str-only strings) are the floor, and
everything they let through is fair game. Sizes stay small (<= 64 KiB) so tens of thousands go out per minute.
"""
from __future__ import annotations

import array
import math
from collections.abc import Callable, Iterator

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Int64, String, UInt32
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ki_vla.joints import JOINT_NAMES

Case = tuple[str, object]
# header.frame_id of every fuzzed JointState and JointTrajectory: lets a monitor tell the fuzzer's messages from the
# robot's and the executor's, also when they arrive late (the nodes under test ignore frame_id).
FUZZ_FRAME = "ki_vla_fuzz"
ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "8UC3", "yuv422", "bayer_rggb8")
BAD_FLOATS = (math.nan, math.inf, -math.inf, 1e300, -1e300, 1e9, -7.5)


def _stamp(t: float) -> Time:
    t = min(max(t, 0.0), 2.0**31 - 1)
    sec = int(t)
    return Time(sec=sec, nanosec=min(int((t - sec) * 1e9), 999_999_999))


def _bytes(rng: np.random.Generator, n: int) -> array.array:
    return array.array("B", rng.integers(0, 256, n, dtype=np.uint8).tobytes())


def _cases(rng: np.random.Generator, n: int, makers: list[Callable[[np.random.Generator], Case]]) -> Iterator[Case]:
    for i in range(n):
        yield makers[i % len(makers)](rng)   # round-robin: every defect kind is tried from the first pass on


def bad_images(rng: np.random.Generator, n: int, now: float = 0.0) -> Iterator[Case]:
    """sensor_msgs/Image whose header, size, step, encoding or data disagree (or agree on absurd values)."""
    def img(h: int, w: int, enc: str, step: int, nbytes: int, big: int = 0, t: float = now) -> Image:
        m = Image(height=h, width=w, encoding=enc, step=step, is_bigendian=big)
        m.header.stamp = _stamp(t)
        m.data = _bytes(rng, nbytes)
        return m

    def size_mismatch(r):
        h, w = r.integers(1, 64, 2)
        return "data shorter than height*step", img(int(h), int(w), "rgb8", int(w) * 3, int(h * w * 3) // 2)

    def step_small(r): return "step < width*channels", img(32, 32, "rgb8", 10, 32 * 10)
    def step_huge(r): return "step huge", img(4, 4, "rgb8", 2**31, 48)
    def dims_huge(r): return "height*width beyond data", img(2**31, 2**31, "rgb8", 3 * 2**31 % 2**32, 100)
    def dims_zero(r): return "zero size", img(0, int(r.integers(0, 64)), "rgb8", 0, 0)

    def unknown_enc(r):
        return "unknown encoding", img(8, 8, str(r.choice(["jpeg", "", "rgb9", "\x00", "RGB8 "])), 24, 192)

    def wrong_enc(r):
        enc = str(r.choice(ENCODINGS))
        return f"encoding {enc} with an rgb8 layout", img(16, 16, enc, 48, 16 * 48)

    def big_endian(r): return "big-endian 16-bit", img(8, 8, "mono16", 16, 128, big=1)
    def truncated(r): return "truncated data", img(48, 64, "rgb8", 192, int(r.integers(0, 48 * 192)))
    def tiny_valid(r): return "valid 1x1", img(1, 1, "rgb8", 3, 3)
    def odd_aspect(r): return "valid 1x4000", img(1, 4000, "mono8", 4000, 4000)
    def future(r): return "stamp 1e6 s ahead", img(24, 32, "rgb8", 96, 24 * 96, t=now + 1e6)
    def past(r): return "stamp 0", img(24, 32, "rgb8", 96, 24 * 96, t=0.0)
    return _cases(rng, n, [size_mismatch, step_small, step_huge, dims_huge, dims_zero, unknown_enc, wrong_enc,
                           big_endian, truncated, tiny_valid, odd_aspect, future, past])


def bad_compressed(rng: np.random.Generator, n: int, now: float = 0.0) -> Iterator[Case]:
    """sensor_msgs/CompressedImage of garbage: random bytes, truncated or lying headers, wrong formats."""
    jpeg_head = bytes([0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10]) + b"JFIF\x00"
    png_head = b"\x89PNG\r\n\x1a\n"

    def msg(fmt: str, data: bytes) -> CompressedImage:
        m = CompressedImage(format=fmt)
        m.header.stamp = _stamp(now)
        m.data = array.array("B", data)
        return m

    def garbage(r): return "random bytes", msg("jpeg", bytes(_bytes(r, int(r.integers(0, 65536)))))
    def empty(r): return "empty", msg(str(r.choice(["jpeg", "png", ""])), b"")

    def jpeg_truncated(r):
        return "JPEG header then garbage", msg("rgb8; jpeg compressed bgr8", jpeg_head + bytes(_bytes(r, 500)))

    def png_truncated(r): return "PNG signature then garbage", msg("png", png_head + bytes(_bytes(r, 300)))
    def wrong_format(r): return "format says png, data says jpeg", msg("png", jpeg_head + bytes(_bytes(r, 100)))

    def odd_format(r):
        return "unknown format string", msg(str(r.choice(["tiff", "\x07", "x" * 1000])), bytes(_bytes(r, 64)))
    return _cases(rng, n, [garbage, empty, jpeg_truncated, png_truncated, wrong_format, odd_format])


def bad_joint_states(rng: np.random.Generator, n: int, now: float = 0.0,
                     names: tuple[str, ...] = JOINT_NAMES) -> Iterator[Case]:
    """sensor_msgs/JointState with NaN/inf, missing, duplicate or unknown names, wrong lengths, absurd stamps."""
    def js(nm: list[str], pos: list[float], t: float = now, vel: list[float] | None = None) -> JointState:
        m = JointState(name=nm, position=pos, velocity=vel or [])
        m.header.stamp = _stamp(t)
        m.header.frame_id = FUZZ_FRAME
        return m

    def good(r) -> list[float]: return [float(x) for x in r.uniform(-0.5, 0.5, len(names))]

    def non_finite(r):
        p = good(r)
        p[int(r.integers(len(p)))] = float(r.choice(BAD_FLOATS[:3]))
        return "NaN/inf position", js(list(names), p)

    def huge(r):
        p = good(r)
        p[int(r.integers(len(p)))] = float(r.choice(BAD_FLOATS[3:5]))
        return "position 1e300", js(list(names), p)

    def missing(r):
        k = int(r.integers(len(names)))
        return "a joint missing", js([x for i, x in enumerate(names) if i != k], good(r)[:-1])

    def duplicate(r):
        nm = list(names)
        nm[1] = nm[0]
        return "duplicate names", js(nm, good(r))

    def unknown(r): return "unknown names only", js([f"joint_{i}" for i in range(len(names))], good(r))
    def short(r): return "fewer positions than names", js(list(names), good(r)[: int(r.integers(0, len(names)))])
    def long(r): return "more positions than names", js(list(names), good(r) + [0.0] * int(r.integers(1, 50)))
    def empty(r): return "empty", js([], [])
    def many(r): return "1000 extra joints", js(list(names) + [f"x{i}" for i in range(1000)], good(r) + [0.0] * 1000)
    def bad_vel(r): return "velocity length wrong", js(list(names), good(r), vel=[math.nan] * 3)
    def future(r): return "stamp 1e6 s ahead", js(list(names), good(r), t=now + 1e6)
    def zero(r): return "stamp 0", js(list(names), good(r), t=0.0)
    def far(r): return "in range, far from the robot", js(list(names), [float(x) for x in r.uniform(-3, 3, len(names))])
    return _cases(rng, n, [non_finite, huge, missing, duplicate, unknown, short, long, empty, many, bad_vel, future,
                           zero, far])


def bad_trajectories(rng: np.random.Generator, n: int, now: float = 0.0, names: tuple[str, ...] = JOINT_NAMES,
                     dt: float = 0.02) -> Iterator[Case]:
    """trajectory_msgs/JointTrajectory (action chunks and controller commands) that are wrong in every field."""
    def traj(nm: list[str], rows: list[list[float]], times: list[float] | None = None,
             t: float = now) -> JointTrajectory:
        m = JointTrajectory(joint_names=nm)
        m.header.stamp = _stamp(t)
        m.header.frame_id = FUZZ_FRAME
        times = times if times is not None else [i * dt for i in range(len(rows))]
        for row, tt in zip(rows, times):
            tt = min(max(tt, 0.0), 2.0**31 - 1)
            m.points.append(JointTrajectoryPoint(positions=row,
                                                 time_from_start=Duration(sec=int(tt), nanosec=int((tt % 1) * 1e9))))
        return m

    def rows(r, h: int = 10, scale: float = 0.3) -> list[list[float]]:
        return [[float(x) for x in r.uniform(-scale, scale, len(names))] for _ in range(h)]

    def nan(r):
        rr = rows(r)
        rr[3][int(r.integers(len(names)))] = float(r.choice(BAD_FLOATS[:3]))
        return "NaN/inf point", traj(list(names), rr)

    def huge(r): return "positions 1e300", traj(list(names), [[1e300] * len(names) for _ in range(5)])
    def beyond(r): return "positions 5 rad (beyond limits)", traj(list(names), rows(r, 10, 5.0))

    def jump(r):
        rr = rows(r, 10, 0.0)
        rr[5] = [2.0] * len(names)
        return "2 rad jump in 20 ms", traj(list(names), rr)

    def future(r): return "stamp 1e6 s ahead", traj(list(names), rows(r), t=now + 1e6)
    def old(r): return "stamp 0", traj(list(names), rows(r), t=0.0)
    def back(r): return "times decreasing", traj(list(names), rows(r, 5), [0.4, 0.3, 0.2, 0.1, 0.0])
    def same(r): return "all points at t=0", traj(list(names), rows(r, 5), [0.0] * 5)
    def far(r): return "points 1e6 s apart", traj(list(names), rows(r, 3), [0.0, 1e6, 2e6])
    def wrong(r): return "unknown joint names", traj([f"j{i}" for i in range(len(names))], rows(r))

    def dup(r):
        nm = list(names)
        nm[2] = nm[3]
        return "duplicate joint names", traj(nm, rows(r))

    def ragged(r):
        rr = rows(r)
        rr[2] = rr[2][: int(r.integers(0, len(names)))]
        return "ragged point", traj(list(names), rr)

    def empty(r): return "no points", traj(list(names), [])
    def no_names(r): return "no joint names", traj([], [[] for _ in range(5)])
    def many(r): return "5000 points", traj(list(names), [[0.0] * len(names)] * 5000)
    def subset(r): return "one arm only", traj(list(names[:7]), [row[:7] for row in rows(r)])
    return _cases(rng, n, [nan, huge, beyond, jump, future, old, back, same, far, wrong, dup, ragged, empty, no_names,
                           many, subset])


def bad_strings(rng: np.random.Generator, n: int) -> Iterator[Case]:
    """std_msgs/String instructions: huge, empty, binary-looking, control characters, odd Unicode."""
    def s(text: str) -> String: return String(data=text)
    def huge(r): return "64 KiB", s("transfer the cube " * 3641)
    def empty(r): return "empty", s("")
    def spaces(r): return "whitespace only", s(" \t\n" * 10)
    def control(r): return "control characters", s("".join(chr(int(c)) for c in r.integers(1, 32, 200)))
    def binary(r): return "binary as latin-1", s(bytes(_bytes(r, 512)).decode("latin-1"))
    def unicode(r): return "RTL, emoji, combining marks", s("\u202etransfer \U0001f9ca the cube\u0301\u200b" * 20)
    def surrogate_free(r): return "random code points", s("".join(chr(int(c)) for c in r.integers(0x20, 0xD7FF, 300)))
    def nul(r): return "embedded NUL", s("transfer\x00 the cube")
    return _cases(rng, n, [huge, empty, spaces, control, binary, unicode, surrogate_free, nul])


def bad_clocks(rng: np.random.Generator, n: int, now: float = 0.0) -> Iterator[Case]:
    """rosgraph_msgs/Clock that jumps backwards, to zero, or far ahead (a Gazebo reset, a looped bag)."""
    def c(t: float) -> Clock: return Clock(clock=_stamp(t))
    def back(r): return "jump back 1-100 s", c(max(0.0, now - float(r.uniform(1, 100))))
    def zero(r): return "zero", c(0.0)
    def ahead(r): return "jump ahead 1e5 s", c(now + 1e5)
    def small_back(r): return "jump back 10 ms", c(max(0.0, now - 0.01))
    return _cases(rng, n, [back, zero, ahead, small_back])


def bad_uints(rng: np.random.Generator, n: int) -> Iterator[Case]:
    """std_msgs/UInt32 step requests (lockstep sims): zero, huge."""
    return _cases(rng, n, [lambda r: ("zero", UInt32(data=0)), lambda r: ("2^32-1", UInt32(data=2**32 - 1)),
                           lambda r: ("random", UInt32(data=int(r.integers(0, 2**32))))])


def bad_int64s(rng: np.random.Generator, n: int) -> Iterator[Case]:
    """std_msgs/Int64 reset seeds: negative, extreme."""
    return _cases(rng, n, [lambda r: ("negative", Int64(data=-int(r.integers(1, 2**62)))),
                           lambda r: ("int64 max", Int64(data=2**63 - 1)), lambda r: ("int64 min", Int64(data=-2**63))])
