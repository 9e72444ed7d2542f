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
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

SCHEDULES = ("exp", "linear")


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

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")

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
