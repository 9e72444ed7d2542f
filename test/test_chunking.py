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

"""ki_vla.control.chunking: timestamp merging, temporal ensembling, latest-chunk, and the executor core."""
from pathlib import Path

import numpy as np
import pytest

from ki_vla.control.chunking import (MERGERS, Chunk, ChunkExecutor, ChunkMerger, LatestChunk, TemporalEnsembling,
                                     make_merger)
from ki_vla.control.safety import ChunkRejected, JointLimits
from ki_vla.joints import GRIPPER_INDICES, JOINT_NAMES, NUM_JOINTS

URDF = Path(__file__).resolve().parents[1] / "urdf" / "aloha_vx300s.urdf"
DT = 0.02


def ramp_chunk(stamp, value0, h=50, dim=2, slope=1.0):
    return Chunk(stamp=stamp, dt=DT, actions=value0 + slope * np.arange(h)[:, None] * DT * np.ones((1, dim)))


def test_chunk_interpolates_by_time_and_compensates_latency():
    c = ramp_chunk(10.0, 0.0)
    assert c.at(9.99) is None and c.at(10.0 + 50 * DT) is None
    np.testing.assert_allclose(c.at(10.0 + 0.1), [0.1, 0.1])     # point 5
    np.testing.assert_allclose(c.at(10.0 + 0.11), [0.11, 0.11])   # between points 5 and 6
    np.testing.assert_allclose(c.at(c.end), c.actions[-1])


def test_temporal_ensembling_weights_oldest_first():
    m = 0.5
    te = TemporalEnsembling(m=m)
    te.add(Chunk(1.0, DT, np.full((50, 1), 3.0)))   # newest by stamp, added first
    te.add(Chunk(0.0, DT, np.full((100, 1), 1.0)))  # oldest
    w = np.exp(-m * np.arange(2))
    expected = (w[0] * 1.0 + w[1] * 3.0) / w.sum()   # i = 0 is the oldest prediction
    assert te.sample(1.1)[0] == pytest.approx(expected)
    assert te.sample(0.5)[0] == pytest.approx(1.0)    # only the old chunk covers 0.5
    assert te.sample(5.0) is None


def test_latest_chunk_and_fallback():
    lc = LatestChunk()
    lc.add(Chunk(0.0, DT, np.full((100, 1), 1.0)))
    lc.add(Chunk(1.0, DT, np.full((10, 1), 3.0)))
    assert lc.sample(1.05)[0] == 3.0
    assert lc.sample(1.5)[0] == 1.0   # newest ended: the older one still covers
    assert lc.sample(0.5)[0] == 1.0


def test_prune_plan_reset_and_registry():
    te = make_merger("temporal_ensembling", 0.01, max_chunks=3)
    for k in range(5):
        te.add(ramp_chunk(k * 0.1, 0.0, h=10))
    assert len(te.chunks) == 3                       # max_chunks keeps the newest
    assert te.prune(0.3 + 9 * DT + 0.001) == 2
    plan = te.plan(0.4, 20, DT)
    assert plan.shape == (20, 2)
    np.testing.assert_allclose(plan[-1], plan[9])   # past the end the last point repeats
    te.reset()
    assert te.sample(0.4) is None and te.latest_end is None
    assert isinstance(make_merger("latest"), LatestChunk)
    assert type(make_merger("rtc")).__name__ == "RTCMerger"
    with pytest.raises(ValueError, match="unknown merge strategy"):
        make_merger("averaging")
    assert all(issubclass(c, ChunkMerger) for c in MERGERS.values())


def test_custom_strategy_plugs_in():
    class Median(ChunkMerger):
        def sample(self, t):
            preds = [p for p in (c.at(t) for c in self.chunks) if p is not None]
            return np.median(preds, axis=0) if preds else None

    m = Median()
    for v in (1.0, 2.0, 10.0):
        m.add(Chunk(0.0, DT, np.full((5, 1), v)))
    assert m.sample(0.01)[0] == 2.0


@pytest.fixture()
def limits():
    return JointLimits.from_urdf(URDF, JOINT_NAMES)


def home():
    q = np.zeros(NUM_JOINTS)
    q[list(GRIPPER_INDICES)] = 0.5
    return q


def make_exec(limits, strategy="temporal_ensembling", timeout=0.2, lookahead=3, **kwargs):
    ex = ChunkExecutor(make_merger(strategy), limits, DT, chunk_timeout=timeout, lookahead=lookahead, **kwargs)
    ex.on_state(home(), 0.0)
    return ex


def tick(ex, t):
    """One control tick of a robot that tracks perfectly: the measured state is the last command."""
    ex.on_state(ex.last_command if ex.last_command is not None else ex.measured, t)
    return ex.tick(t)


def chunk_arrays(q0, h=50, slope=0.0, joint=0):
    pos = np.repeat(q0[None], h, axis=0)
    pos[:, joint] += slope * np.arange(h) * DT
    return list(JOINT_NAMES), np.arange(h) * DT, pos


def test_executor_needs_state_then_holds(limits):
    ex = ChunkExecutor(make_merger("latest"), limits, DT)
    assert ex.tick(0.0) is None
    ex.on_state(home(), 0.0)
    cmd = ex.tick(0.0)
    assert cmd.holding and cmd.positions.shape == (1, NUM_JOINTS)
    np.testing.assert_allclose(cmd.positions[0], home())


def test_executor_latency_compensation(limits):
    ex = make_exec(limits, "latest", lookahead=1)
    # Chunk from an observation at t=1.0 arrives at t=1.1 (100 ms inference): command for 1.12 = point 6.
    names, times, pos = chunk_arrays(home(), slope=0.5)
    ex.on_chunk(names, times, pos, stamp=1.0, now=1.1)
    cmd = tick(ex, 1.1)
    assert not cmd.holding and cmd.first_used == (1.0,)
    assert cmd.positions[0][0] == pytest.approx(min(0.5 * 0.12, limits.velocity[0] * DT))


def test_executor_invariants_under_adversarial_stream(limits):
    """Random good and bad chunks, gaps and stale periods: every output within limits and velocity."""
    rng = np.random.default_rng(1)
    ex = make_exec(limits, timeout=0.1)
    prev = home()
    rejected = 0
    t = 0.0
    for step in range(1500):
        t = step * DT
        if step % 7 == 0 and not (400 < step < 600):   # a silent period: must hold, then resume
            q0 = ex.last_command if ex.last_command is not None else home()
            names, times, pos = chunk_arrays(q0 + rng.normal(0, 0.02, NUM_JOINTS), slope=rng.normal(0, 2.0),
                                             joint=int(rng.integers(NUM_JOINTS)))
            kind = rng.integers(6)
            if kind == 0:
                pos[3, 2] = np.nan
            elif kind == 1:
                pos[10:, 1] += 2.0                       # absurd jump
            elif kind == 2:
                names = names[::-1]                      # reordered names are fine
                pos = pos[:, ::-1]
            elif kind == 3:
                pos = pos + rng.normal(0, 0.3, pos.shape)   # noisy: may exceed velocity, may be rejected
            try:
                ex.on_chunk(names, times, pos, stamp=t - 0.05, now=t)
            except ChunkRejected:
                rejected += 1
        cmd = tick(ex, t)
        q = cmd.positions
        assert np.all(q >= limits.lower - 1e-12) and np.all(q <= limits.upper + 1e-12)
        steps = np.diff(np.vstack([prev[None], q]), axis=0)
        assert np.all(np.abs(steps) <= limits.velocity * DT + 1e-9), step
        if 400 < step < 600 and step > 400 + 50 + 2:  # silent: the last chunk (50 points) has ended
            assert cmd.holding
        prev = q[0]
    assert rejected > 0


def test_resume_after_hold_ramps(limits):
    ex = make_exec(limits, "latest", timeout=1.0, lookahead=1)
    ex.tick(0.0)
    target = home()
    target[0] = 0.45                                   # within max_start_deviation, far for one tick
    names, times, pos = chunk_arrays(target)
    ex.on_chunk(names, times, pos, stamp=1.0, now=1.0)
    seen = [tick(ex, 1.0 + k * DT).positions[0][0] for k in range(30)]
    assert np.all(np.diff([0.0] + seen) <= limits.velocity[0] * DT + 1e-9)
    assert seen[-1] == pytest.approx(0.45)


def test_executor_rejects_future_and_expired(limits):
    ex = make_exec(limits)
    names, times, pos = chunk_arrays(home(), h=5)
    with pytest.raises(ChunkRejected, match="future"):
        ex.on_chunk(names, times, pos, stamp=10.0, now=0.0)
    with pytest.raises(ChunkRejected, match="ended"):
        ex.on_chunk(names, times, pos, stamp=0.0, now=5.0)
    times2 = times.copy()
    times2[2] += 0.005
    with pytest.raises(ChunkRejected, match="evenly"):
        ex.on_chunk(names, times2, pos, stamp=0.0, now=0.0)


def test_silent_joint_states_hold_then_resume_with_the_ramp(limits):
    """No /joint_states for longer than state_timeout: stop advancing targets, keep the chunk, resume after."""
    ex = make_exec(limits, "latest", timeout=5.0, lookahead=1, state_timeout=0.11)
    names, times, pos = chunk_arrays(home(), slope=0.5)
    ex.on_chunk(names, times, pos, stamp=0.0, now=0.0)
    for k in range(10):
        cmd = tick(ex, k * DT)
    assert not cmd.holding
    frozen = ex.last_command.copy()
    t = 9 * DT
    for k in range(1, 20):  # the state stops arriving at t; 0.11 s later the executor holds
        cmd = ex.tick(t + k * DT)
        if k * DT > 0.11:
            assert cmd.holding and cmd.hold_reason == "stale_state"
            np.testing.assert_array_equal(cmd.positions[0], ex.last_command)
    assert ex.last_command[0] == pytest.approx(frozen[0] + 5 * 0.5 * DT, abs=1e-9)  # advanced 5 more ticks, no more
    cmd = tick(ex, t + 20 * DT)  # state back: the same chunk continues, as a ramp from the held position
    assert not cmd.holding and ex.merger.chunks
    assert abs(cmd.positions[0][0] - frozen[0] - 5 * 0.5 * DT) <= limits.velocity[0] * DT + 1e-9


def test_measured_state_far_from_the_command_re_anchors(limits):
    """The issue's reproduction: the robot is 0.4 rad from the last command (e-stop release, torque off, a reset).

    The executor must command where the robot is, not the old pose, and accept chunks built around it."""
    tol = np.full(NUM_JOINTS, 0.2)
    tol[list(GRIPPER_INDICES)] = 0.0
    for tolerance, expect_anchor in ((tol, True), (None, False)):
        ex = make_exec(limits, "latest", timeout=0.5, lookahead=1, path_tolerance=tolerance)
        tick(ex, 0.0)
        moved = home()
        moved[1] += 0.4
        for k in range(1, 500):  # 10 s with the robot elsewhere
            ex.on_state(moved, k * DT)
            cmd = ex.tick(k * DT)
        if not expect_anchor:  # the old behaviour, kept when the tolerance is off: the old pose, 10 s later
            np.testing.assert_allclose(cmd.positions[0], home())
            continue
        assert cmd.holding and ex.path_violations == 1  # re-anchored once, then held there waiting for a chunk
        np.testing.assert_allclose(cmd.positions[0], moved)
        assert "left_shoulder" in ex.last_violation
        names, times, pos = chunk_arrays(moved + 0.01)  # a chunk around the real position is accepted
        ex.on_chunk(names, times, pos, stamp=10.0, now=10.0)
        assert not tick(ex, 10.0).holding


def test_one_bogus_joint_state_is_not_believed_a_confirmed_jump_is(limits):
    """Re-anchoring turns the measured state into a command: a single far-off /joint_states sample (a second
    publisher, a glitch) must not move the arm; a real jump (a sim reset) is believed once 3 samples agree."""
    tol = np.full(NUM_JOINTS, 0.2)
    ex = make_exec(limits, "latest", timeout=0.5, lookahead=1, path_tolerance=tol)
    tick(ex, 0.0)
    bogus = home()
    bogus[:6] += 2.0
    for k in range(1, 200):  # every other sample is bogus, for 4 s
        assert ex.on_state(bogus if k % 2 else home(), k * DT) == (k % 2 == 0)
        cmd = ex.tick(k * DT)
        np.testing.assert_allclose(cmd.positions[0], home())
    assert ex.path_violations == 0 and ex.state_jumps_ignored == 100
    moved = home()
    moved[1] += 0.8  # a reset: the robot really is elsewhere now
    assert [ex.on_state(moved, 4.0 + k * DT) for k in range(3)] == [False, False, True]
    assert ex.tick(4.0 + 2 * DT).hold_reason == "path_tolerance"
    np.testing.assert_allclose(ex.last_command, moved)
    off = make_exec(limits, "latest", state_jump_tolerance=0.0)  # 0 = off: every sample is believed
    assert off.on_state(bogus, DT)
    with pytest.raises(ValueError, match="state_jump_tolerance"):
        make_exec(limits, "latest", state_jump_tolerance=float("nan"))


def test_path_violation_while_executing_drops_the_plan_and_holds(limits):
    tol = np.full(NUM_JOINTS, 0.3)
    ex = make_exec(limits, "latest", timeout=5.0, lookahead=1, path_tolerance=tol)
    names, times, pos = chunk_arrays(home(), slope=0.5)
    ex.on_chunk(names, times, pos, stamp=0.0, now=0.0)
    tick(ex, 0.0)
    blocked = ex.last_command.copy()
    blocked[0] -= 0.35  # the arm is pushed back (an obstacle, a person): 3 samples agree, so it is believed
    for k in range(3):
        ex.on_state(blocked, DT * (1 + k) / 3)
    cmd = ex.tick(DT)
    assert cmd.holding and cmd.hold_reason == "path_tolerance" and not ex.merger.chunks
    np.testing.assert_allclose(cmd.positions[0], blocked)
    ex.on_state(blocked, 2 * DT)
    assert ex.tick(2 * DT).holding and ex.path_violations == 1  # held there, not re-triggered
    with pytest.raises(ValueError, match="path_tolerance"):
        ChunkExecutor(make_merger("latest"), limits, DT, path_tolerance=np.full(3, 0.1))


def test_a_chunk_is_followed_to_its_end_then_the_command_is_held(limits):
    """JTC semantics: the chunk timeout counts from the chunk's last point, not from when it was received."""
    ex = make_exec(limits, "latest", timeout=0.1, lookahead=1)
    names, times, pos = chunk_arrays(home(), slope=0.2)  # 50 points: covers 0 .. 0.98 s
    ex.on_chunk(names, times, pos, stamp=0.0, now=0.0)
    for k in range(49):  # 0.96 s without a new chunk, far beyond chunk_timeout since receipt: still executing
        cmd = tick(ex, k * DT)
        assert not cmd.holding, k
        assert not ex.timed_out(k * DT)
    assert cmd.positions[0][0] == pytest.approx(0.2 * 49 * DT)
    for k in range(49, 60):
        cmd = tick(ex, k * DT)
        assert cmd.holding and cmd.hold_reason == "no_chunk"
    assert cmd.positions[0][0] == pytest.approx(0.2 * 49 * DT)  # the chunk's last point, held
    assert ex.timed_out(1.1) and not ex.timed_out(1.05)


def test_a_clock_that_jumps_back_drops_the_old_timeline(limits):
    """A Gazebo reset or a looped bag: chunks stamped on the old timeline must not come back when the clock
    reaches their stamps again, and a state received before the jump is not fresh after it."""
    ex = make_exec(limits, "latest", lookahead=1)
    names, times, pos = chunk_arrays(home(), slope=0.3)
    ex.on_chunk(names, times, pos, stamp=10.0, now=10.0)
    ex.on_state(home(), 10.02)
    assert not ex.tick(10.02).holding
    cmd = ex.tick(0.0)  # the clock went back 10 s
    assert cmd.holding and cmd.hold_reason == "stale_state" and ex.time_jumps == 1 and not ex.merger.chunks
    for k in range(1, 10):
        t = 10.0 + k * DT  # the new timeline passes the old chunk's stamps: it must stay dropped
        cmd = tick(ex, t)
        assert cmd.holding and cmd.hold_reason == "no_chunk"
