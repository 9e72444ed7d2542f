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

"""ki_vla.control.safety: URDF limits, clamping, rate limiting, chunk validation, robot mappings."""
import math
from pathlib import Path

import numpy as np
import pytest

from ki_vla.control.safety import (ChunkCheck, ChunkRejected, JointLimits, JointMapping, limit_step,
                                   parse_urdf_limits, validate_chunk)
from ki_vla.joints import GRIPPER_INDICES, JOINT_NAMES, NUM_JOINTS

URDF = Path(__file__).resolve().parents[1] / "urdf" / "aloha_vx300s.urdf"


@pytest.fixture(scope="module")
def limits() -> JointLimits:
    return JointLimits.from_urdf(URDF, JOINT_NAMES)


def test_urdf_has_vx300s_limits(limits):
    d = dict(zip(limits.names, zip(limits.lower, limits.upper, limits.velocity)))
    for side in ("left", "right"):
        assert d[f"{side}_shoulder"][:2] == pytest.approx((math.radians(-106), math.radians(72)), abs=1e-5)
        assert d[f"{side}_elbow"][:2] == pytest.approx((math.radians(-101), math.radians(92)), abs=1e-5)
        assert d[f"{side}_wrist_angle"][:2] == pytest.approx((math.radians(-107), math.radians(128)), abs=1e-5)
        assert d[f"{side}_waist"][1] == pytest.approx(math.pi, abs=1e-4)
        assert d[f"{side}_gripper"][:2] == (0.0, 1.0)   # normalized gripper command
        assert d[f"{side}_waist"][2] == pytest.approx(math.pi, abs=1e-5)


def test_urdf_mimic_fingers_and_structure():
    table = parse_urdf_limits(URDF.read_text())
    assert set(JOINT_NAMES) <= set(table)
    assert table["left_left_finger"][:2] == pytest.approx((0.021, 0.057))


def test_from_urdf_string_and_errors():
    xml = ('<robot name="r"><link name="a"/><link name="b"/><link name="c"/>'
           '<joint name="j" type="revolute"><parent link="a"/><child link="b"/>'
           '<limit lower="-1" upper="2" velocity="3"/></joint>'
           '<joint name="k" type="continuous"><parent link="b"/><child link="c"/></joint></robot>')
    lim = JointLimits.from_urdf(xml, ["j", "k"], velocity_scale=0.5)
    assert lim.lower[0] == -1 and lim.upper[0] == 2 and lim.velocity[0] == 1.5
    assert lim.lower[1] == -math.inf and lim.velocity[1] == math.inf
    with pytest.raises(ValueError, match="no joint"):
        JointLimits.from_urdf(xml, ["j", "zz"])
    with pytest.raises(ValueError, match="XML"):
        parse_urdf_limits("<robot><joint")
    with pytest.raises(ValueError, match="velocity_scale"):
        JointLimits.from_urdf(xml, ["j"], velocity_scale=2.0)


def test_clamp_and_limit_step(limits):
    q = np.zeros(NUM_JOINTS)
    q[1] = 5.0
    q[GRIPPER_INDICES[0]] = -0.3
    out, n = limits.clamp(q)
    assert n == 2 and out[1] == limits.upper[1] and out[GRIPPER_INDICES[0]] == 0.0
    prev = np.zeros(3)
    out, n = limit_step(prev, np.array([1.0, -1.0, 0.01]), np.array([0.1, 0.1, 0.1]))
    np.testing.assert_allclose(out, [0.1, -0.1, 0.01])
    assert n == 2


def chunk(h=10, dt=0.02, base=None):
    base = np.zeros(NUM_JOINTS) if base is None else base
    times = np.arange(h) * dt
    pos = np.repeat(base[None], h, axis=0) + np.linspace(0, 0.05, h)[:, None]
    pos[:, list(GRIPPER_INDICES)] = 0.5
    return list(JOINT_NAMES), times, pos


def test_valid_chunk_is_reordered(limits):
    names, times, pos = chunk()
    perm = np.random.default_rng(0).permutation(NUM_JOINTS)
    q = validate_chunk([names[i] for i in perm], times, pos[:, perm], limits)
    np.testing.assert_allclose(q, pos)


@pytest.mark.parametrize("mutate, match", [
    (lambda n, t, p: (n, t, np.where(np.arange(p.size).reshape(p.shape) == 3, np.nan, p)), "NaN"),
    (lambda n, t, p: (n[:-1] + ["bogus"], t, p), "mismatch"),
    (lambda n, t, p: (n[:-1] + [n[0]], t, p), "duplicate"),
    (lambda n, t, p: (n, t, p[:, :-1]), "shape"),
    (lambda n, t, p: (n, t[:-1], p), "shape"),
    (lambda n, t, p: (n, t[::-1].copy(), p), "increase"),
    (lambda n, t, p: (n, t[:0], p[:0]), "no points"),
    (lambda n, t, p: (n, t, p + np.eye(1, p.size, 5 * NUM_JOINTS + 2).reshape(p.shape) * 0.8), "jump"),
    (lambda n, t, p: (n, t, p + 10.0), "beyond"),
])
def test_bad_chunks_rejected(limits, mutate, match):
    with pytest.raises(ChunkRejected, match=match) as e:
        validate_chunk(*mutate(*chunk()), limits)
    reasons = {"NaN": "nan", "mismatch": "names", "duplicate": "names", "shape": "length", "increase": "timing",
               "no points": "length", "jump": "jump", "beyond": "limits"}
    assert e.value.reason == reasons[match]


def test_too_many_points_and_start_deviation(limits):
    names, times, pos = chunk(h=20)
    with pytest.raises(ChunkRejected, match="max_points"):
        validate_chunk(names, times, pos, limits, ChunkCheck(max_points=10))
    ref = pos[0].copy()
    ref[0] += 1.0
    with pytest.raises(ChunkRejected, match="away from the current command"):
        validate_chunk(names, times, pos, limits, reference=ref)
    validate_chunk(names, times, pos, limits, reference=pos[0])


def test_joint_mapping_roundtrip():
    scale = [1.0] * NUM_JOINTS
    offset = [0.0] * NUM_JOINTS
    scale[1] = -1.0
    g = GRIPPER_INDICES[0]
    scale[g], offset[g] = 0.036, 0.021   # normalized gripper -> finger metres
    m = JointMapping.from_lists(scale, offset, NUM_JOINTS)
    q = np.linspace(-1, 1, NUM_JOINTS)
    np.testing.assert_allclose(m.from_robot(m.to_robot(q)), q)
    assert m.to_robot(np.ones(NUM_JOINTS))[g] == pytest.approx(0.057)
    with pytest.raises(ValueError):
        JointMapping.from_lists([0.0] * NUM_JOINTS, offset, NUM_JOINTS)
    with pytest.raises(ValueError):
        JointMapping.from_lists([1.0] * 3, offset, NUM_JOINTS)


def test_gripper_overshoot_is_clamped_not_a_rejection(limits):
    """A gripper command past [0, 1] means fully open/closed; the arm joints keep their tight tolerance."""
    from ki_vla.control.chunking import ChunkExecutor, LatestChunk

    g = GRIPPER_INDICES[0]
    names, times, pos = chunk()
    pos[:, g] = 1.39  # 0.39 beyond fully open: the overshoot measured on a trained policy
    q = validate_chunk(names, times, pos, limits)
    ex = ChunkExecutor(LatestChunk(), limits, dt=0.02)
    ex.on_state(pos[0], 0.0)
    ex.on_chunk(names, times, pos, stamp=0.0, now=0.0)
    assert q[0, g] == 1.39 and 0.0 <= ex.tick(0.0).positions[0, g] <= 1.0
    pos[:, g] = 2.5  # absurd even for a gripper
    with pytest.raises(ChunkRejected, match="gripper.*tolerance 1.0") as e:
        validate_chunk(names, times, pos, limits)
    assert e.value.reason == "limits"
    names, times, pos = chunk()
    pos[:, 1] = limits.upper[1] + 0.3  # an arm joint: tolerance 0.2
    with pytest.raises(ChunkRejected, match="left_shoulder.*tolerance 0.2"):
        validate_chunk(names, times, pos, limits)
    with pytest.raises(ChunkRejected, match="beyond"):
        validate_chunk(*chunk()[:2], chunk()[2] + np.where(np.arange(NUM_JOINTS) == g, 1.0, 0.0), limits,
                       ChunkCheck(gripper_limit_tolerance=0.2))


def test_gripper_decisions_are_not_jumps_but_arm_jumps_are(limits):
    """A chunk that closes the gripper at once (start 0.8 away, a 0.5 step between points) is accepted; the same on
    an arm joint, or on the gripper with check_gripper_motion, is refused."""
    g = GRIPPER_INDICES[1]
    names, times, pos = chunk()
    pos[:, g] = np.where(np.arange(len(times)) < 3, 0.7, 0.2)  # a 0.5 step between points 2 and 3
    reference = pos[0].copy()
    reference[g] = 1.0  # the current command: open; the chunk starts 0.3 from it and then closes fast
    validate_chunk(names, times, pos, limits, reference=reference)
    ref2 = reference.copy()
    ref2[g] = 0.0
    pos2 = pos.copy()
    pos2[:, g] = 0.8  # 0.8 from the current command
    validate_chunk(names, times, pos2, limits, reference=ref2)
    strict = ChunkCheck(check_gripper_motion=True)
    with pytest.raises(ChunkRejected, match="jump on 'right_gripper'"):
        validate_chunk(names, times, pos, limits, strict)
    with pytest.raises(ChunkRejected, match="right_gripper"):
        validate_chunk(names, times, pos2, limits, strict, reference=ref2)
    names, times, pos = chunk()
    pos[3:, 2] += 0.5
    with pytest.raises(ChunkRejected, match="jump on 'left_elbow'"):
        validate_chunk(names, times, pos, limits)


def test_limits_follow_the_joint_mapping_into_policy_units(limits):
    """A sign-flipped shoulder and an offset elbow: what the executor commands stays inside the URDF's range
    once mapped to the robot (clamping policy units to the robot's range let the flipped shoulder leave it)."""
    from ki_vla.control.chunking import ChunkExecutor, LatestChunk

    scale, offset = np.ones(NUM_JOINTS), np.zeros(NUM_JOINTS)
    scale[1], offset[2], scale[3] = -1.0, 0.3, 2.0
    mapping = JointMapping(scale, offset)
    pol = limits.in_policy_units(mapping)
    assert pol.lower[1] == pytest.approx(-limits.upper[1]) and pol.upper[1] == pytest.approx(-limits.lower[1])
    assert (pol.lower[2] == pytest.approx(limits.lower[2] - 0.3)
            and pol.velocity[3] == pytest.approx(limits.velocity[3] / 2))
    dt, n = 0.02, 200
    for bound in (pol.lower, pol.upper):
        ex = ChunkExecutor(LatestChunk(), pol, dt=dt, chunk_timeout=10.0)
        start = np.clip(np.zeros(NUM_JOINTS), pol.lower, pol.upper)
        ex.on_state(start, 0.0)
        goal = np.clip(bound + np.sign(bound) * 0.1, -3.0, 3.0)  # a little beyond the bound: clamped, not refused
        ramp = start + np.clip(np.arange(n)[:, None] / 100.0, 0.0, 1.0) * (goal - start)
        ex.on_chunk(list(JOINT_NAMES), np.arange(n) * dt, ramp, stamp=0.0, now=0.0)
        robot = []
        for k in range(n):
            ex.on_state(ex.last_command if ex.last_command is not None else start, k * dt)
            robot.append(mapping.to_robot(ex.tick(k * dt).positions[0]))
        robot = np.array(robot)
        assert np.all(robot >= limits.lower - 1e-9) and np.all(robot <= limits.upper + 1e-9)
        assert np.isclose(robot[-1, 1], limits.lower[1] if bound is pol.upper else limits.upper[1])  # reached, mirrored
