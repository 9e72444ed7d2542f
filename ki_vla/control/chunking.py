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

"""Turning a stream of action chunks into one action per control tick (METHOD.md, "Executing chunks").

Why timestamps: a chunk predicted from the observation taken at time s reaches the executor after the
inference latency L. Its point i is meant for time s + i * dt, so at control time t the executor reads the
point for t (index (t - s) / dt, interpolated), skipping the L / dt points that are already in the past.
That is the latency compensation; it needs no knowledge of L, only a shared clock (ROS time).

Why a class hierarchy: temporal ensembling (ACT) and latest-chunk are two strategies among several;
real-time chunking (Black et al. 2025) needs the actions the executor has committed to for the next
inference window (`plan`) and its own merge rule. A new strategy subclasses `ChunkMerger` and registers
in `MERGERS`; the executor only calls `admit`, `add`, `sample`, `plan`, `prune`, `reset`.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import numpy as np

from ki_vla.control.safety import ChunkCheck, ChunkRejected, JointLimits, limit_step, validate_chunk


@dataclass(frozen=True)
class Chunk:
    """A validated action chunk: `actions[i]` is the target for time `stamp + i * dt` (seconds)."""

    stamp: float
    dt: float
    actions: np.ndarray  # (horizon, dim) float64, real units, the executor's joint order

    def __post_init__(self) -> None:
        if self.actions.ndim != 2 or self.actions.shape[0] < 1:
            raise ValueError(f"chunk actions must be (horizon>=1, dim), got {self.actions.shape}")
        if not (self.dt > 0 and math.isfinite(self.dt)):
            raise ValueError(f"chunk dt must be positive and finite, got {self.dt}")

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    @property
    def end(self) -> float:
        """Time of the last point."""
        return self.stamp + (self.horizon - 1) * self.dt

    def covers(self, t: float) -> bool:
        # A tiny tolerance so a tick landing exactly on the last point is not lost to float rounding.
        eps = 1e-9
        return self.stamp - eps <= t <= self.end + eps

    def at(self, t: float) -> np.ndarray | None:
        """The chunk's target at time t, linearly interpolated between points; None outside the chunk.

        Interpolation matters because the control clock is not phase-locked to the observation clock: a
        tick usually falls between two points, and snapping to the nearest one would add up to dt / 2 of
        timing error and a sawtooth in the commanded velocity.
        """
        if not self.covers(t):
            return None
        x = min(max((t - self.stamp) / self.dt, 0.0), self.horizon - 1.0)
        i0 = int(math.floor(x))
        i1 = min(i0 + 1, self.horizon - 1)
        frac = x - i0
        return (1.0 - frac) * self.actions[i0] + frac * self.actions[i1]


class ChunkMerger(ABC):
    """Holds the chunks received so far and answers "what should the robot do at time t"."""

    def __init__(self, max_chunks: int = 64) -> None:
        if max_chunks < 1:
            raise ValueError("max_chunks must be >= 1")
        self.max_chunks = max_chunks
        self._chunks: list[Chunk] = []  # sorted by stamp, oldest first

    def admit(self, chunk: Chunk, now: float) -> Chunk:
        """The chunk as this strategy will follow it, given that it arrives at `now` (before `add`): unchanged here;
        RTCMerger re-times a chunk that arrives from standstill."""
        return chunk

    def add(self, chunk: Chunk) -> None:
        """Insert by stamp (chunks may arrive out of order across processes); keep at most max_chunks."""
        if self._chunks and chunk.actions.shape[1] != self._chunks[0].actions.shape[1]:
            raise ValueError(f"chunk dim {chunk.actions.shape[1]} differs from {self._chunks[0].actions.shape[1]}")
        self._chunks.append(chunk)
        self._chunks.sort(key=lambda c: c.stamp)
        del self._chunks[:-self.max_chunks]

    def prune(self, t: float) -> int:
        """Forget chunks that end before t (they can never contribute again); returns how many."""
        keep = [c for c in self._chunks if c.end >= t - 1e-9]
        dropped = len(self._chunks) - len(keep)
        self._chunks = keep
        return dropped

    def reset(self) -> None:
        """Drop everything, e.g. after a hold, so stale predictions never mix with fresh ones."""
        self._chunks = []

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(self._chunks)

    @property
    def latest_end(self) -> float | None:
        """The last time any chunk has a prediction for (None when empty)."""
        return max((c.end for c in self._chunks), default=None)

    @abstractmethod
    def sample(self, t: float) -> np.ndarray | None:
        """The merged target for time t, or None when no chunk covers t (the executor then holds)."""

    def plan(self, t: float, n: int, dt: float) -> np.ndarray | None:
        """Targets for t, t + dt, ..., t + (n - 1) dt; None unless at least the first exists.

        Missing later points repeat the last available one. The executor sends these as the trajectory's
        look-ahead; real-time chunking will use the same call to read the actions it must freeze.
        """
        first = self.sample(t)
        if first is None:
            return None
        out = np.empty((n, first.shape[0]))
        out[0] = first
        for k in range(1, n):
            nxt = self.sample(t + k * dt)
            out[k] = out[k - 1] if nxt is None else nxt
        return out


class TemporalEnsembling(ChunkMerger):
    """ACT's temporal ensembling: average every chunk's prediction for t with weights exp(-m * i).

    i = 0 is the oldest prediction (ACT's convention: a positive m favours older predictions, which
    smooths; m = 0.01 is nearly uniform). Needs overlapping chunks to have any effect and blurs
    multimodal predictions, which is why the strategy is swappable.
    """

    def __init__(self, m: float = 0.01, max_chunks: int = 64) -> None:
        super().__init__(max_chunks)
        if not math.isfinite(m):
            raise ValueError(f"ensembling coefficient must be finite, got {m}")
        self.m = float(m)

    def sample(self, t: float) -> np.ndarray | None:
        preds = [p for p in (c.at(t) for c in self._chunks) if p is not None]
        if not preds:
            return None
        w = np.exp(-self.m * np.arange(len(preds)))
        return np.tensordot(w / w.sum(), np.stack(preds), axes=1)


class LatestChunk(ChunkMerger):
    """Follow the newest chunk that covers t (no averaging: sharp, but switches abruptly between chunks;
    the executor's velocity limit bounds that switch)."""

    def sample(self, t: float) -> np.ndarray | None:
        for c in reversed(self._chunks):
            p = c.at(t)
            if p is not None:
                return p
        return None


class RTCMerger(LatestChunk):
    """Real-time chunking's executor side (ki_vla.infer.rtc). The policy samples each chunk so that its first actions
    agree with what this executor has committed to (the plan the executor node publishes), so the newest chunk is
    followed as is: no averaging, and the switch is smooth because the chunks agree there.

    The first-chunk rule: a chunk that arrives while no chunk covers now (start, after a hold, a re-anchor or a reset)
    starts at its first action now. Latency compensation would skip the actions whose time passed during inference,
    but from standstill none of them ran: skipping them starts the arm mid-motion, the jump LeRobot's RTC showed at
    start-up (#4223: 21 of 30 actions skipped after a slow warm-up). Chunks that arrive while one is executing keep
    their timestamps (their skipped prefix is what the robot executed meanwhile, which is what RTC agreed on)."""

    def admit(self, chunk: Chunk, now: float) -> Chunk:
        if chunk.stamp >= now or any(c.covers(now) for c in self._chunks):
            return chunk
        return replace(chunk, stamp=now)


MERGERS: dict[str, type[ChunkMerger]] = {
    "temporal_ensembling": TemporalEnsembling,
    "latest": LatestChunk,
    "rtc": RTCMerger,
}


def make_merger(name: str, ensembling_m: float = 0.01, max_chunks: int = 64) -> ChunkMerger:
    """Build a merger from config names (the executor's `merge_strategy` parameter)."""
    cls = MERGERS.get(name)
    if cls is None:
        raise ValueError(f"unknown merge strategy {name!r}; choose from {sorted(MERGERS)}")
    if cls is TemporalEnsembling:
        return TemporalEnsembling(m=ensembling_m, max_chunks=max_chunks)
    return cls(max_chunks=max_chunks)


@dataclass
class TickCommand:
    """What the executor sends at one control tick.

    positions: (lookahead, dim) targets for now + dt, now + 2 dt, ...; within limits, velocity-limited.
    holding: True when the last command is being held (no fresh chunk covers the tick, the joint state is stale,
        or the robot left the path tolerance); `hold_reason` says which.
    clamped / rate_limited: how many joint values the position clamp / velocity limit changed.
    first_used: stamps of chunks that contributed for the first time (for camera-to-command latency).
    """

    positions: np.ndarray
    holding: bool
    clamped: int = 0
    rate_limited: int = 0
    first_used: tuple[float, ...] = ()
    hold_reason: str = ""  # "" (executing) | "no_chunk" | "stale_state" | "path_tolerance"


class ChunkExecutor:
    """The executor's control logic without ROS: validate chunks, merge by time, clamp, rate-limit, hold.

    Invariants (what the tests check): every returned position is within the joint limits; consecutive
    commands differ by at most velocity limit * dt per joint, including across a hold and the resumption
    after it (a fresh chunk far from the held position is approached as a ramp, never a jump); nothing is
    commanded before the robot's position is known, because a rate limit needs a starting point.

    Chunks are followed to their last point, like a JointTrajectoryController follows a trajectory: a chunk that
    is still valid is never thrown away because no newer one came (the policy paused, the state was stale for a
    moment); when no chunk covers the tick the last command is held. `chunk_timeout` counts from the newest chunk's
    last point (JTC's cmd_timeout): past it, the executor reports that its input timed out (`timed_out`).

    The measured state is watched like ros2_controllers' JointTrajectoryController watches it:
    - state_timeout: with no joint state for this long the executor stops advancing targets and holds its last
      command (it would otherwise execute chunks blind). Valid chunks are kept, so it resumes with the ramp.
    - path_tolerance (per joint, 0 = unchecked): when the robot is farther than this from the command, the command
      is re-anchored at the measured position, the merged chunks are dropped and the executor holds there until a
      chunk arrives. This is the one exception to the velocity invariant, and it moves the command to where the
      robot already is. It is what an e-stop release, a torque-off start, a blocked arm, a person moving the arm
      or a sim reset produce; without it the executor keeps commanding the old pose, refuses every chunk built
      around the real one, and drives the arm back at full speed. Re-anchoring only beyond the tolerance (not on
      every hold tick) is deliberate: following the measured state while holding lets gravity sag the arm.
    - state_jump_tolerance (rad, 0 = off): a measurement farther than this from the previous one is believed only
      when `state_confirm` consecutive measurements agree on it. Why: re-anchoring makes the measured state a
      command, so one bogus /joint_states message (a second publisher, a driver glitch; the reliability campaign's
      fuzzer sends such) would otherwise move the arm to it at once. The default 0.2 is above what a joint moves
      between two samples at 50 Hz (~0.06 rad at full speed; raise it for slower state topics) and below the arms'
      path tolerance minus the tracking error (0.3 - 0.06), so a sample it lets through cannot trigger a re-anchor.
      Measured with 0.5: the campaign's bogus samples within 0.5 rad were believed and re-anchored the command. A
      real jump (a sim reset teleports the arms home) is believed 2 samples later.
    """

    def __init__(self, merger: ChunkMerger, limits: JointLimits, dt: float, chunk_timeout: float = 0.5,
                 lookahead: int = 1, check: ChunkCheck | None = None, state_timeout: float = 0.1,
                 path_tolerance: np.ndarray | None = None, state_jump_tolerance: float = 0.2,
                 state_confirm: int = 3) -> None:
        if dt <= 0 or chunk_timeout <= 0 or lookahead < 1 or not state_timeout > 0:
            raise ValueError("dt, chunk_timeout and state_timeout must be > 0 and lookahead >= 1")
        if not (math.isfinite(state_jump_tolerance) and state_jump_tolerance >= 0) or state_confirm < 1:
            raise ValueError(f"state_jump_tolerance must be finite and >= 0 (0 = off) and state_confirm >= 1, got "
                             f"{state_jump_tolerance}, {state_confirm}")
        n = len(limits.names)
        tol = np.zeros(n) if path_tolerance is None else np.asarray(path_tolerance, dtype=np.float64)
        if tol.shape != (n,) or not np.all(np.isfinite(tol)) or np.any(tol < 0):
            raise ValueError(f"path_tolerance needs {n} finite values >= 0 (0 = unchecked), got {tol.tolist()}")
        self.merger = merger
        self.limits = limits
        self.dt = dt
        self.chunk_timeout = chunk_timeout
        self.state_timeout = state_timeout
        self.path_tolerance = tol
        self.state_jump_tolerance = state_jump_tolerance
        self.state_confirm = state_confirm
        self.state_jumps_ignored = 0                  # measurements not believed (a jump not yet confirmed)
        self._jump: tuple[np.ndarray, int] | None = None   # the unconfirmed new position, how many agreed on it
        self.lookahead = lookahead
        self.check = check or ChunkCheck()
        self.last_command: np.ndarray | None = None   # position commanded for "now"
        self.measured: np.ndarray | None = None
        self.measured_time: float | None = None       # when `measured` arrived (the executor's clock)
        self.last_chunk_time: float | None = None     # receive time of the newest accepted chunk
        self.newest_end: float | None = None          # last point of the newest accepted chunk
        self.holding = True
        self.hold_reason = "no_chunk"
        self.path_violations = 0                      # re-anchors at the measured state
        self.time_jumps = 0                           # the clock went backwards (a sim reset, a looped bag)
        self._last_tick: float | None = None
        self.last_violation = ""                      # which joint, how far (for the log)
        self._used: set[float] = set()

    def on_state(self, q: np.ndarray, now: float) -> bool:
        """Latest measured joint positions (policy units, limits' joint order), received at `now`. False when the
        measurement is not believed (yet): a jump beyond state_jump_tolerance that too few samples confirmed."""
        q = np.asarray(q, dtype=np.float64)
        tol = self.state_jump_tolerance
        if tol > 0 and self.measured is not None and np.max(np.abs(q - self.measured)) > tol:
            same = self._jump is not None and np.max(np.abs(q - self._jump[0])) <= tol
            self._jump = (q, self._jump[1] + 1 if same else 1)
            if self._jump[1] < self.state_confirm:
                self.state_jumps_ignored += 1
                return False
        self._jump = None
        self.measured = q
        self.measured_time = now
        return True

    def state_fresh(self, now: float) -> bool:
        return self.measured_time is not None and now - self.measured_time <= self.state_timeout

    def tracking_error(self) -> np.ndarray | None:
        """|measured - commanded| per joint (None before both exist)."""
        if self.measured is None or self.last_command is None:
            return None
        return np.abs(self.measured - self.last_command)

    def on_chunk(self, joint_names: list[str] | tuple[str, ...], times: np.ndarray, positions: np.ndarray,
                 stamp: float, now: float) -> Chunk:
        """Validate and add a chunk; raises ChunkRejected (and keeps the previous plan) when it is bad."""
        if not math.isfinite(stamp):
            raise ChunkRejected("timing", "chunk stamp is not finite")
        if stamp > now + 1.0:
            raise ChunkRejected("timing", f"chunk stamped {stamp - now:.3f} s in the future (clock mismatch?)")
        reference = self.last_command if self.last_command is not None else self.measured
        q = validate_chunk(joint_names, times, positions, self.limits, self.check,
                           reference=reference, reference_offset=now - stamp)
        times = np.asarray(times, dtype=np.float64)
        if q.shape[0] > 1:
            dts = np.diff(times)
            if np.ptp(dts) > 1e-6 * max(1.0, float(dts.mean())):
                raise ChunkRejected("timing", "chunk points are not evenly spaced in time")
            dt = float(dts.mean())
        else:
            dt = self.dt
        chunk = Chunk(stamp=stamp + float(times[0]), dt=dt, actions=q)
        if chunk.end < now:
            raise ChunkRejected("expired",
                                f"chunk ended {now - chunk.end:.3f} s ago (inference slower than the horizon)")
        chunk = self.merger.admit(chunk, now)
        self.merger.add(chunk)
        self.last_chunk_time = now
        self.newest_end = chunk.end if self.newest_end is None else max(self.newest_end, chunk.end)
        return chunk

    def timed_out(self, now: float) -> bool:
        """No chunk covers now and the newest one ended more than chunk_timeout ago (or none ever came)."""
        return self.newest_end is None or now > self.newest_end + self.chunk_timeout

    def tick(self, now: float) -> TickCommand | None:
        """Targets for the next `lookahead` ticks; None while the robot's position is still unknown."""
        if self._last_tick is not None and now < self._last_tick - 1e-9:
            self._time_jumped_back()
        self._last_tick = now
        if self.last_command is None:
            if self.measured is None:
                return None
            self.last_command, _ = self.limits.clamp(self.measured)
        self.merger.prune(now)
        if not self.state_fresh(now):
            return self._hold("stale_state")
        if self._off_path():
            return self._hold("path_tolerance")
        plan = self.merger.plan(now + self.dt, self.lookahead, self.dt)
        if plan is None:
            return self._hold("no_chunk")
        self.holding, self.hold_reason = False, ""
        first_used = tuple(c.stamp for c in self.merger.chunks if c.stamp not in self._used and c.covers(now + self.dt))
        self._used.update(first_used)
        if len(self._used) > 4 * self.merger.max_chunks:
            live = {c.stamp for c in self.merger.chunks}
            self._used &= live
        out = np.empty_like(plan)
        prev = self.last_command
        clamped = limited = 0
        max_delta = self.limits.velocity * self.dt
        for k in range(plan.shape[0]):
            target, c = self.limits.clamp(plan[k])
            out[k], r = limit_step(prev, target, max_delta)
            prev = out[k]
            clamped += c
            limited += r
        self.last_command = out[0].copy()
        return TickCommand(out, holding=False, clamped=clamped, rate_limited=limited, first_used=first_used)

    def _off_path(self) -> bool:
        """Re-anchor at the measured state when it is beyond the path tolerance (see the class docstring)."""
        err = self.tracking_error()
        checked = self.path_tolerance > 0
        if err is None or not np.any(err[checked] > self.path_tolerance[checked]):
            return False
        j = int(np.argmax(np.where(checked, err - self.path_tolerance, -np.inf)))
        self.last_violation = (f"{self.limits.names[j]!r} is {err[j]:.3f} from its command (path_tolerance "
                               f"{self.path_tolerance[j]:g}): holding at the measured position")
        self.path_violations += 1
        self.last_command, _ = self.limits.clamp(self.measured)
        self.merger.reset()
        self.last_chunk_time = self.newest_end = None  # hold until a chunk built around the real position arrives
        return True

    def restart_from_measured(self) -> None:
        """Forget the plan and command where the robot is (when the node becomes active again): the next chunk is
        approached from there with the rate limit, never from a pose commanded before the pause."""
        self.merger.reset()
        self.last_chunk_time = self.newest_end = None
        self.last_command = None if self.measured is None else self.limits.clamp(self.measured)[0]
        self.holding, self.hold_reason = True, "no_chunk"

    def _time_jumped_back(self) -> None:
        """Every stamp we hold is from the old timeline: chunks would come back 'valid' once the clock reaches their
        stamps again, and the state's age would be negative. Drop the chunks, wait for a new state."""
        self.time_jumps += 1
        self.merger.reset()
        self.last_chunk_time = self.newest_end = None
        self.measured_time = None

    def _hold(self, reason: str) -> TickCommand:
        self.holding, self.hold_reason = True, reason
        return TickCommand(np.repeat(self.last_command[None], self.lookahead, axis=0), holding=True, hold_reason=reason)
