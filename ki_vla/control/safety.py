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

"""The last line of defence between a learned policy and the motors: limits, rate limits, chunk checks.

Why here and not in the executor node: every rule is plain array math that must be unit-tested without
ROS, and the same checks serve offline tools (bag replay, sim evaluation) that must reject what the robot
would reject. The joint limits come from the URDF so the description, robot_state_publisher and the
executor can never disagree.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ChunkRejected(ValueError):
    """A chunk that must not reach the robot. `reason` is a short fixed key (names, length, nan, timing,
    limits, jump, start_jump, expired) for counters; the message has the details for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class JointLimits:
    """Position and velocity limits for `names`, in that order (inf where the URDF gives none)."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.names)
        for field_name in ("lower", "upper", "velocity"):
            arr = getattr(self, field_name)
            if arr.shape != (n,):
                raise ValueError(f"{field_name} has shape {arr.shape}, expected ({n},)")
        if np.any(self.lower > self.upper):
            bad = [self.names[i] for i in np.flatnonzero(self.lower > self.upper)]
            raise ValueError(f"lower > upper for {bad}")
        if np.any(~(self.velocity > 0)):
            bad = [self.names[i] for i in np.flatnonzero(~(self.velocity > 0))]
            raise ValueError(f"velocity limit must be > 0 for {bad}")

    @classmethod
    def from_urdf(cls, source: str | Path, joint_names: tuple[str, ...] | list[str],
                  velocity_scale: float = 1.0) -> JointLimits:
        """Read limits of `joint_names` from a URDF file path or XML string.

        velocity_scale (0, 1] lets a deployment run slower than the hardware allows without editing the
        description. Missing joints raise ValueError: silently unlimited joints are how robots get hurt.
        """
        if not 0.0 < velocity_scale <= 1.0:
            raise ValueError(f"velocity_scale must be in (0, 1], got {velocity_scale}")
        text = str(source)
        if not text.lstrip().startswith("<"):
            text = Path(source).read_text()
        table = parse_urdf_limits(text)
        missing = [j for j in joint_names if j not in table]
        if missing:
            raise ValueError(f"URDF has no joint(s) {missing}")
        lower = np.array([table[j][0] for j in joint_names], dtype=np.float64)
        upper = np.array([table[j][1] for j in joint_names], dtype=np.float64)
        vel = np.array([table[j][2] for j in joint_names], dtype=np.float64) * velocity_scale
        return cls(tuple(joint_names), lower, upper, vel)

    def in_policy_units(self, mapping: "JointMapping") -> JointLimits:
        """These limits (the robot's units, as the URDF writes them) in the policy's units under `mapping`.

        The executor clamps and rate-limits policy-unit commands before mapping them to the robot, so with a sign
        flip (scale -1) or an offset the URDF range must be mapped too: a flipped shoulder's [-1.85, 1.26] is
        [-1.26, 1.85] for the policy; clamping to the unmapped range would let the robot leave its real one."""
        a, b = mapping.from_robot(self.lower), mapping.from_robot(self.upper)
        return JointLimits(self.names, np.minimum(a, b), np.maximum(a, b), self.velocity / np.abs(mapping.scale))

    def clamp(self, q: np.ndarray) -> tuple[np.ndarray, int]:
        """Clip into [lower, upper]; returns the clipped vector and how many joints were clipped."""
        out = np.clip(q, self.lower, self.upper)
        return out, int(np.count_nonzero(out != q))

    def within(self, q: np.ndarray, tol: float = 0.0) -> bool:
        return bool(np.all(q >= self.lower - tol) and np.all(q <= self.upper + tol))


def parse_urdf_limits(xml_text: str) -> dict[str, tuple[float, float, float]]:
    """Joint name -> (lower, upper, velocity) for every movable joint of a URDF.

    continuous joints have no position limits (-inf, inf); a missing velocity attribute means no velocity
    limit (inf). Fixed, floating and planar joints are not commandable and are left out; mimic joints are
    kept (callers never ask for them).
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ValueError(f"URDF is not valid XML: {exc}") from exc
    if root.tag != "robot":
        raise ValueError(f"URDF root element is <{root.tag}>, expected <robot>")
    out: dict[str, tuple[float, float, float]] = {}
    for joint in root.iter("joint"):
        jtype = joint.get("type", "")
        name = joint.get("name")
        if not name or jtype not in ("revolute", "prismatic", "continuous"):
            continue
        lim = joint.find("limit")
        vel = float(lim.get("velocity")) if lim is not None and lim.get("velocity") is not None else math.inf
        if jtype == "continuous":
            out[name] = (-math.inf, math.inf, vel)
            continue
        if lim is None or lim.get("lower") is None or lim.get("upper") is None:
            raise ValueError(f"{jtype} joint {name!r} needs <limit lower= upper=>")
        out[name] = (float(lim.get("lower")), float(lim.get("upper")), vel)
    return out


# Path tolerance of the arm joints (rad; the executor's default, JointTrajectoryController semantics: 0 = unchecked).
# 5x the worst tracking error of the sim arms under the scripted plans (0.056 rad, 5 seeds of transfer_cube and
# insertion); grippers are unchecked because a gripper closed on an object never reaches its command.
ARM_PATH_TOLERANCE = 0.3


def path_tolerances(names: tuple[str, ...] | list[str], arm: float = ARM_PATH_TOLERANCE,
                    gripper: float = 0.0) -> np.ndarray:
    """Per-joint path tolerance for joints `names`: `arm` for arm joints, `gripper` for `*gripper` joints."""
    return np.where(_grippers(names), gripper, arm).astype(np.float64)


def limit_step(prev: np.ndarray, target: np.ndarray, max_delta: np.ndarray) -> tuple[np.ndarray, int]:
    """Move from prev toward target by at most max_delta per joint (the velocity limit times the period).

    This is what makes a resumption after a hold, or a switch between disagreeing chunks, a ramp instead
    of a jump. Returns the limited target and how many joints were limited.
    """
    delta = np.clip(target - prev, -max_delta, max_delta)
    out = prev + delta
    return out, int(np.count_nonzero(np.abs(out - target) > 1e-12))


@dataclass(frozen=True)
class ChunkCheck:
    """Thresholds for `validate_chunk` (executor parameters; defaults suit the vx300s at 50 Hz).

    max_points: longer chunks are refused (a corrupt length must not cost memory or time).
    jump_velocity_factor: consecutive points may move at most factor * velocity limit * dt; beyond that
        the chunk asks for a speed the arm cannot have, i.e. it is garbage.
    max_start_deviation: the chunk's point for "now" may differ from the current reference (last command
        or measured state) by at most this many units per joint.
    limit_tolerance: points beyond the URDF limits by more than this are absurd and reject the chunk
        (points slightly outside are clamped, which is normal near a limit).
    gripper_limit_tolerance: the same for grippers (joints named `*gripper`, normalized 0 closed .. 1 open).
    check_gripper_motion: apply the jump and start-deviation checks to grippers too (default off).

    Why grippers are treated apart: a gripper switches between two states, and a policy's chunk that decides
    to close a few ticks earlier than the last one did (a start 0.8 away from the current command, or a step
    of 0.2 between two points) is a decision, not garbage; measured on a trained transfer-cube policy, every
    rejected chunk was refused for its gripper. Flow policies also overshoot the command (0.39 beyond [0, 1]),
    which only means fully open/closed. The executor clamps grippers to [0, 1] and rate-limits them to their
    URDF velocity like every joint, so nothing unsafe reaches the robot; refusing the chunk instead freezes the
    arms with it, the next observation is the same, so is the next chunk, and the episode never recovers.
    """

    max_points: int = 1000
    jump_velocity_factor: float = 3.0
    max_start_deviation: float = 0.5
    limit_tolerance: float = 0.2
    gripper_limit_tolerance: float = 1.0
    check_gripper_motion: bool = False

    def tolerances(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """Per-joint limit tolerance for joints `names`."""
        return np.where(_grippers(names), self.gripper_limit_tolerance, self.limit_tolerance)


def _grippers(names: tuple[str, ...] | list[str]) -> np.ndarray:
    return np.array([n.endswith("gripper") for n in names], dtype=bool)


def validate_chunk(joint_names: list[str] | tuple[str, ...], times: np.ndarray, positions: np.ndarray,
                   limits: JointLimits, check: ChunkCheck = ChunkCheck(),
                   reference: np.ndarray | None = None, reference_offset: float = 0.0) -> np.ndarray:
    """Check a chunk from outside the process; return its positions reordered to `limits.names`.

    joint_names/times/positions are the message's (times: seconds from the chunk stamp, (H,);
    positions: (H, len(joint_names))). `reference` is where the robot is commanded to be now and
    `reference_offset` the time from the chunk stamp to now, so the start check compares like with like.
    Raises ChunkRejected naming the first problem.
    """
    names = list(joint_names)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ChunkRejected("names", f"duplicate joint names {dup}")
    if set(names) != set(limits.names):
        missing = sorted(set(limits.names) - set(names))
        extra = sorted(set(names) - set(limits.names))
        raise ChunkRejected("names", f"joint names mismatch: missing {missing}, unexpected {extra}")
    times = np.asarray(times, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ChunkRejected("length", "chunk has no points")
    if times.size > check.max_points:
        raise ChunkRejected("length", f"chunk has {times.size} points, more than max_points={check.max_points}")
    if positions.shape != (times.size, len(names)):
        raise ChunkRejected("length", f"positions have shape {positions.shape}, expected ({times.size}, {len(names)})")
    if not np.all(np.isfinite(times)) or not np.all(np.isfinite(positions)):
        raise ChunkRejected("nan", "chunk contains NaN or inf")
    if times[0] < 0 or np.any(np.diff(times) <= 0):
        raise ChunkRejected("timing", "time_from_start must start >= 0 and strictly increase")
    order = [names.index(n) for n in limits.names]
    q = positions[:, order]
    tol = check.tolerances(limits.names)
    if not limits.within(q, tol):
        over = np.maximum(q - limits.upper, limits.lower - q).max(axis=0) - tol
        worst = int(np.argmax(over))
        raise ChunkRejected("limits", f"joint {limits.names[worst]!r} goes {over[worst] + tol[worst]:.3f} beyond its "
                            f"limits (tolerance {tol[worst]})")
    if times.size > 1:
        dts = np.diff(times)[:, None]
        speed = np.abs(np.diff(q, axis=0)) / dts
        allowed = check.jump_velocity_factor * limits.velocity
        bad = speed > allowed
        if not check.check_gripper_motion:
            bad[:, _grippers(limits.names)] = False
        if np.any(bad):
            k, j = np.argwhere(bad)[0]
            raise ChunkRejected("jump", f"jump on {limits.names[j]!r} between points {k} and {k + 1}: "
                                f"{speed[k, j]:.2f}/s > {allowed[j]:.2f}/s")
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        idx = int(np.clip(np.searchsorted(times, reference_offset), 0, times.size - 1))
        dev = np.abs(q[idx] - ref)
        if not check.check_gripper_motion:
            dev[_grippers(limits.names)] = 0.0
        if np.any(dev > check.max_start_deviation):
            j = int(np.argmax(dev))
            raise ChunkRejected("start_jump", f"chunk starts {dev[j]:.3f} away from the current command on "
                                f"{limits.names[j]!r} (max_start_deviation {check.max_start_deviation})")
    return q


@dataclass(frozen=True)
class JointMapping:
    """Per-joint affine map between the policy's conventions and one robot's units: robot = scale * q + offset.

    Covers sign flips (scale -1), zero offsets and gripper ranges (normalized 0 closed .. 1 open onto the
    robot's closed/open positions) as configuration, so no robot-specific constant lives in code.
    """

    scale: np.ndarray
    offset: np.ndarray

    def __post_init__(self) -> None:
        if self.scale.shape != self.offset.shape or self.scale.ndim != 1:
            raise ValueError(f"scale {self.scale.shape} and offset {self.offset.shape} must be equal 1-D")
        if np.any(self.scale == 0) or not np.all(np.isfinite(self.scale)) or not np.all(np.isfinite(self.offset)):
            raise ValueError("mapping scale must be finite and non-zero, offset finite")

    @classmethod
    def identity(cls, n: int) -> JointMapping:
        return cls(np.ones(n), np.zeros(n))

    @classmethod
    def from_lists(cls, scale: list[float], offset: list[float], n: int) -> JointMapping:
        """Empty lists mean identity (the default in config); otherwise both must have n entries."""
        s = np.asarray(scale, dtype=np.float64) if len(scale) else np.ones(n)
        o = np.asarray(offset, dtype=np.float64) if len(offset) else np.zeros(n)
        if s.shape != (n,) or o.shape != (n,):
            raise ValueError(f"joint mapping needs {n} scales and offsets, got {s.size} and {o.size}")
        return cls(s, o)

    def to_robot(self, q: np.ndarray) -> np.ndarray:
        return self.scale * q + self.offset

    def from_robot(self, x: np.ndarray) -> np.ndarray:
        return (x - self.offset) / self.scale
