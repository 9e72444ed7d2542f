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

"""Real-time chunking (RTC; Black et al. 2025, "Real-Time Execution of Action Chunking Flow Policies"), inference side.

While chunk n+1 is computed the robot keeps executing chunk n: the first `delay` actions of the new chunk are already
committed. RTC samples the new chunk so that it agrees with what the previous chunk says for that stretch, and blends
smoothly into fresh actions after it: each Euler step adds the vector-Jacobian product of the weighted error between
the previous chunk and the step's predicted clean actions to the velocity (guided flow sampling, "soft inpainting").

Time convention. The paper's flow time tau runs from 0 (noise) to 1 (clean), A^tau = tau * A + (1 - tau) * noise,
velocity A - noise. Ours (openpi's) runs the other way: t = 1 - tau, x_t = t * noise + (1 - t) * A, velocity
v = noise - A, Euler steps with dt = -1 / steps, predicted clean actions x_t - t * v. So the paper's guidance weight
min(beta, (1 - tau) / tau * (tau^2 + (1 - tau)^2) / (1 - tau)^2) becomes, with tau = 1 - t,
min(beta, t / (1 - t) * ((1 - t)^2 + t^2) / t^2), and since our velocity points away from the clean actions the
correction is subtracted from it (both move x toward the previous chunk).

The prefix weights (paper, eq. 5): 1 for the `delay` committed actions, decaying (exp or linear) to 0 at
`horizon - exec_horizon`, 0 after: the tail that only the new observation should decide.

Two ways to apply them (`RTCGuide.method`): "guided" is the paper's (one backward through the expert per Euler step);
"inpaint" is the cheap one without gradients: after each step, x is blended toward the previous chunk's point on the
flow path, (1 - w) x + w (t' noise + (1 - t') target) at the step's new time t', so the committed rows end exactly at
the previous chunk and the rest is free (the expert sees an inpainted input, and the join relies on it reacting).
"prefix" is for models trained with training-time RTC (`PolicyConfig.rtc_max_delay`): the `delay` committed actions
are given exactly, at flow time 0, in every step, as in training; the rest is denoised from noise (no weights, no
gradients).

Where the previous chunk comes from in the ROS graph: the executor publishes what it has committed to (its plan, with
the `rtc` merger; ki_vla.control.chunking.RTCMerger), and `guide_from_plan` reads it at the observation's time. The
delay is measured, not assumed: `DelayEstimator` counts the control periods recent inferences took.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

SCHEDULES = ("exp", "linear")
METHODS = ("guided", "inpaint", "prefix")


def prefix_weights(horizon: int, delay: int, exec_horizon: int, schedule: str = "exp") -> np.ndarray:
    """(horizon,) weights of the previous chunk's actions on the new one (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= delay <= horizon or not 0 <= exec_horizon <= horizon - delay:
        raise ValueError(f"need 0 <= delay ({delay}) <= horizon ({horizon}) and 0 <= exec_horizon ({exec_horizon}) "
                         f"<= horizon - delay")
    i = np.arange(horizon, dtype=np.float64)
    end = horizon - exec_horizon          # first index with weight 0
    w = np.zeros(horizon)
    w[:delay] = 1.0
    span = end - delay
    if span > 0:
        c = (end - i[delay:end]) / (span + 1)  # in (0, 1), decreasing
        w[delay:end] = c * np.expm1(c) / np.expm1(1.0) if schedule == "exp" else c
    return w


def guidance_weight(t: float, beta: float) -> float:
    """The guidance weight at our flow time t (1 = noise, 0 = clean), clipped at beta (see the module docstring)."""
    if not 0.0 < t < 1.0:
        return float(beta)
    return float(min(beta, t / (1.0 - t) * ((1.0 - t) ** 2 + t ** 2) / t ** 2))


@dataclass
class RTCGuide:
    """What the new chunk must agree with: the previous chunk's actions at the new chunk's times (real units,
    (horizon, action_dim); rows past the previous chunk's end repeat its last action, their weight is 0 anyway)."""

    target: np.ndarray
    delay: int               # actions committed before the new chunk can take effect
    exec_horizon: int        # actions the new chunk executes before the next one replaces it
    beta: float = 5.0        # the guidance weight's clip (the paper's code: 5; LeRobot: 10)
    schedule: str = "exp"
    method: str = "guided"   # guided (VJP per step) | inpaint (blend, no gradients) | prefix (training-time RTC)

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.method not in METHODS:
            raise ValueError(f"RTC method must be one of {METHODS}, got {self.method!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        self.target = np.asarray(self.target, dtype=np.float64)
        if self.target.ndim != 2 or not np.all(np.isfinite(self.target)):
            raise ValueError(f"RTC target must be a finite (horizon, action_dim) array, got shape {self.target.shape}")

    def weights(self) -> np.ndarray:
        return prefix_weights(len(self.target), self.delay, self.exec_horizon, self.schedule)


def previous_at(chunk: np.ndarray, chunk_start: int, now: int) -> np.ndarray:
    """The previous chunk (started at tick `chunk_start`) seen from tick `now`: row k is its action for tick now + k."""
    offset = now - chunk_start
    if offset < 0:
        raise ValueError(f"the previous chunk starts after now ({chunk_start} > {now})")
    idx = np.minimum(np.arange(len(chunk)) + offset, len(chunk) - 1)
    return chunk[idx]


def guided_step(velocity: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, t: float,
                target: torch.Tensor, weights: torch.Tensor, beta: float) -> torch.Tensor:
    """The RTC-corrected velocity at x (B, H, A) and flow time t: velocity(x) minus the guidance weight times the
    VJP of the predicted clean actions against weights * (target - predicted). target and x in the same
    (normalized) units; weights (H,) or (B, H, A) (zero on padded action dims)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = velocity(xg)
        clean = xg - t * v
        w = weights if weights.dim() == 3 else weights[None, :, None]
        (correction,) = torch.autograd.grad(clean, xg, grad_outputs=(w * (target - clean)).detach())
    return v.detach() - guidance_weight(t, beta) * correction


def inpaint_step(x: torch.Tensor, noise: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                 t_next: float) -> torch.Tensor:
    """The "inpaint" method after an Euler step to flow time t_next: x blended toward the previous chunk's point on
    the flow path from the same noise (weights (B, H, A), zero on padded dims; at t_next = 0 the rows of weight 1
    are the target exactly)."""
    on_path = t_next * noise + (1.0 - t_next) * target
    return (1.0 - weights) * x + weights * on_path


def guide_from_plan(plan_start: float, plan_dt: float, plan: np.ndarray, stamp: float, dt: float, horizon: int,
                    delay: int, exec_horizon: int, beta: float, schedule: str = "exp",
                    method: str = "guided") -> RTCGuide | None:
    """The guide for a chunk whose point k is for time `stamp + k * dt`, from a committed plan (point j at
    `plan_start + j * plan_dt`, linearly interpolated, the last point repeated past its end). None when there is
    nothing to agree with: no plan (the executor is holding, or has not started), or a plan that ends before
    `stamp` (the first chunk after a pause is sampled freely)."""
    plan = np.asarray(plan, dtype=np.float64)
    if plan.ndim != 2 or len(plan) == 0:
        return None
    end = plan_start + (len(plan) - 1) * plan_dt
    if stamp > end + 1e-9:
        return None
    # Vectorized over the horizon (Chunk.at samples one time per call, and rounds the last point by 1e-14).
    x = np.clip((stamp + np.arange(horizon) * dt - plan_start) / plan_dt, 0.0, len(plan) - 1.0)
    i0 = np.floor(x).astype(int)
    i1 = np.minimum(i0 + 1, len(plan) - 1)
    frac = (x - i0)[:, None]
    target = (1.0 - frac) * plan[i0] + frac * plan[i1]
    delay = min(max(int(delay), 0), horizon)
    return RTCGuide(target, delay=delay, exec_horizon=min(max(int(exec_horizon), 0), horizon - delay), beta=beta,
                    schedule=schedule, method=method)


class DelayEstimator:
    """RTC's delay d: how many committed actions the robot executed while recent inferences ran (observation stamp
    to chunk publication, in control periods, rounded up), the largest over the last `window` inferences. Why not a
    configured maximum latency: a too-large d freezes actions the new observation should decide, a too-small one
    lets the new chunk disagree with what already ran; the measured recent maximum tracks a machine's actual load.
    Before any measurement `initial` is used."""

    def __init__(self, dt: float, window: int = 8, initial: int = 0) -> None:
        if not dt > 0 or window < 1 or initial < 0:
            raise ValueError(f"need dt > 0, window >= 1 and initial >= 0, got {dt}, {window}, {initial}")
        self.dt, self.initial = float(dt), int(initial)
        self._ticks: deque[int] = deque(maxlen=window)

    def record(self, latency_s: float) -> None:
        if math.isfinite(latency_s) and latency_s >= 0:
            self._ticks.append(int(math.ceil(latency_s / self.dt - 1e-6)))

    @property
    def delay(self) -> int:
        return max(self._ticks) if self._ticks else self.initial


class CommittedPlan:
    """The policy's side of real-time chunking in a running graph (policy_node), without ROS: the executor's newest
    committed plan, the measured delay, and the guide for the next chunk. Thread-safe: plans arrive on the executor's
    topic while the inference thread asks for guides.

    The first-chunk rule, explicitly: with no plan (before the executor accepted anything, or after it announced a
    hold with an empty plan) the next chunk is sampled freely, and the executor's `rtc` merger starts it at its first
    action (ki_vla.control.chunking.RTCMerger)."""

    def __init__(self, dt: float, horizon: int, beta: float, schedule: str = "exp", method: str = "guided",
                 window: int = 8) -> None:
        RTCGuide(np.zeros((horizon, 1)), 0, 0, beta, schedule, method)   # validates beta, schedule and method
        self.dt, self.horizon, self.beta, self.schedule, self.method = dt, horizon, beta, schedule, method
        self.delays = DelayEstimator(dt, window)
        self._lock = threading.Lock()
        self._plan: tuple[float, float, np.ndarray] | None = None   # (first point's time, spacing, actions)
        self._awaited: float | None = None      # stamp of the chunk just published, whose plan is awaited
        self._arrived = threading.Event()
        self.guided = self.unguided = 0

    def set_plan(self, chunk_stamp: float, start: float, spacing: float, actions: np.ndarray | None) -> None:
        """The executor's plan after accepting the chunk stamped `chunk_stamp` (None or empty: it holds)."""
        with self._lock:
            empty = actions is None or len(actions) == 0 or not spacing > 0
            self._plan = None if empty else (float(start), float(spacing), np.asarray(actions, dtype=np.float64))
            if empty or (self._awaited is not None and abs(chunk_stamp - self._awaited) < 1e-6):
                self._arrived.set()

    def published(self, chunk_stamp: float, latency_s: float) -> None:
        """A chunk for the observation stamped `chunk_stamp` went out `latency_s` after that observation."""
        self.delays.record(latency_s)
        with self._lock:
            self._awaited = chunk_stamp
            self._arrived.clear()

    def wait_for_plan(self, timeout: float) -> bool:
        """Block until the executor's plan for the chunk just published arrives (True), at most `timeout` s."""
        return self._arrived.wait(timeout) if self._awaited is not None else True

    def guide(self, stamp: float) -> RTCGuide | None:
        with self._lock:
            plan = self._plan
        d = min(self.delays.delay, self.horizon)
        out = None if plan is None else guide_from_plan(*plan, stamp=stamp, dt=self.dt, horizon=self.horizon, delay=d,
                                                        exec_horizon=max(d, 1), beta=self.beta,
                                                        schedule=self.schedule, method=self.method)
        if out is None:
            self.unguided += 1
        else:
            self.guided += 1
        return out


def prefix_times(t: torch.Tensor, horizon: int, delay: torch.Tensor) -> torch.Tensor:
    """(B, H) per-token flow times: 0 for the first `delay` (B,) tokens of each sample (the committed prefix), t (B,)
    after them (training-time RTC)."""
    idx = torch.arange(horizon, device=t.device)[None, :]
    return torch.where(idx < delay[:, None], torch.zeros((), device=t.device, dtype=t.dtype), t[:, None])
