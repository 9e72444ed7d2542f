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

"""What the policy consumes at inference time, independent of where it came from (ROS, sim, dataset), and how
one is assembled from asynchronous inputs, refusing stale or incomplete ones (no ROS imports).

Why the assembler: cameras, joint states and instructions arrive on their own schedules; the policy must only ever
see a set of inputs that are all recent, or a robot acts on a picture of the past. Kept free of rclpy so the rules
are unit-tested directly; policy_node feeds it from its callbacks. A ground-floor module: the model layer imports
it without reaching up into inference.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observation:
    """One synchronized observation.

    images: camera name -> RGB uint8 array (H, W, 3), any size (the policy resizes).
    state: joint positions in real units, shape (state_dim,), ordered as `ki_vla.joints.JOINT_NAMES`.
    instruction: the task text.
    stamp: observation time in seconds (ROS time); chunks are stamped with it.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    stamp: float = 0.0
    extras: dict = field(default_factory=dict)

    @classmethod
    def blank(cls, camera_names: tuple[str, ...] | list[str], image_size: int, state_dim: int,
              instruction: str = "warm up") -> "Observation":
        """Black images and a zero state: for warm-up passes that allocate and compile before real requests."""
        return cls(images={c: np.zeros((image_size, image_size, 3), np.uint8) for c in camera_names},
                   state=np.zeros(state_dim, np.float32), instruction=instruction)

    def validate(self, camera_names: tuple[str, ...] | list[str], state_dim: int) -> None:
        """Raise ValueError naming the first problem, so callers can log it and keep running."""
        missing = [c for c in camera_names if c not in self.images]
        if missing:
            raise ValueError(f"observation is missing camera(s) {missing}; have {sorted(self.images)}")
        for name in camera_names:
            img = self.images[name]
            if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"camera {name!r}: expected uint8 (H, W, 3), got "
                                 f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}")
        state = np.asarray(self.state)
        if state.shape != (state_dim,):
            raise ValueError(f"state has shape {state.shape}, expected ({state_dim},)")
        if not np.all(np.isfinite(state)):
            raise ValueError("state contains NaN or inf")
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError("instruction is empty")


class StaleObservation(ValueError):
    """The inputs do not make a usable observation now; `reason` is a short key for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class _Stamped:
    stamp: float
    value: object


class InstructionError(ValueError):
    """An instruction that was rejected (empty, too long, not text)."""


def clean_instruction(text: object, max_chars: int) -> str:
    """The instruction as the policy will read it, or InstructionError saying why it is refused."""
    if not isinstance(text, str):
        raise InstructionError(f"instruction must be text, got {type(text).__name__}")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise InstructionError("empty instruction")
    if len(cleaned) > max_chars:
        raise InstructionError(f"instruction has {len(cleaned)} characters, more than "
                               f"max_instruction_chars={max_chars}")
    return cleaned


class ObservationAssembler:
    """Thread-safe latest-value store for each input; `assemble` builds an Observation or refuses.

    Images are stored as whatever the caller decodes lazily (a callable returning RGB) so frames that are
    superseded before the next inference are never decoded.
    """

    def __init__(self, camera_names: tuple[str, ...] | list[str], state_dim: int, max_image_age: float,
                 max_state_age: float, max_future: float = 0.05) -> None:
        if not (max_image_age > 0 and max_state_age > 0 and max_future >= 0):
            raise ValueError("max_image_age and max_state_age must be > 0, max_future >= 0")
        self.camera_names = tuple(camera_names)
        self.state_dim = state_dim
        self.max_image_age = max_image_age
        self.max_state_age = max_state_age
        # An input stamped ahead of our clock is from a machine whose clock is skewed: its age is meaningless (a
        # dead camera 10 s "in the future" would look fresh for 10 s), so beyond this tolerance it is refused.
        self.max_future = max_future
        self._lock = threading.Lock()
        self._images: dict[str, _Stamped] = {}
        self._state: _Stamped | None = None
        self._instruction: str | None = None
        self._last_key: tuple[float, ...] | None = None

    def set_image(self, name: str, stamp: float, image: object) -> None:
        with self._lock:
            self._images[name] = _Stamped(stamp, image)

    def set_state(self, stamp: float, q: np.ndarray) -> None:
        with self._lock:
            self._state = _Stamped(stamp, np.asarray(q, dtype=np.float32))

    def set_instruction(self, text: str) -> None:
        with self._lock:
            self._instruction = text

    @property
    def instruction(self) -> str | None:
        with self._lock:
            return self._instruction

    def assemble(self, now: float, require_new: bool = True) -> Observation:
        """The observation for `now`; raises StaleObservation (missing / stale / not new) otherwise.

        The observation's stamp is its oldest image's stamp: chunk point 0 is the action for that moment, and
        the executor compensates everything after it (inference time, transport). The oldest image, not the
        newest input (usually the joint state, at a higher rate): the policy plans from the scene it sees, which
        is as old as its oldest frame; stamping it newer would under-compensate that frame's age (up to
        max_image_age) and the robot would act on where things were, late. The state's own stamp stays in
        extras["input_stamps"].
        """
        with self._lock:
            images = dict(self._images)
            state = self._state
            instruction = self._instruction
        missing = [c for c in self.camera_names if c not in images]
        if missing:
            raise StaleObservation("missing_camera", f"no frame yet from {missing}")
        if state is None:
            raise StaleObservation("missing_state", "no joint state yet")
        if instruction is None:
            raise StaleObservation("missing_instruction", "no instruction yet")
        for name, stamp in ([(f"{c} frame", images[c].stamp) for c in self.camera_names]
                            + [("joint state", state.stamp)]):
            if stamp - now > self.max_future:
                raise StaleObservation("future_stamp", f"{name} is stamped {stamp - now:.3f} s in the future "
                                                       f"(max_future {self.max_future} s): clocks out of sync?")
        for c in self.camera_names:
            age = now - images[c].stamp
            if age > self.max_image_age:
                raise StaleObservation("stale_camera", f"{c} frame is {age * 1e3:.0f} ms old "
                                                       f"(max_image_age {self.max_image_age * 1e3:.0f} ms)")
        age = now - state.stamp
        if age > self.max_state_age:
            raise StaleObservation("stale_state", f"joint state is {age * 1e3:.0f} ms old "
                                                  f"(max_state_age {self.max_state_age * 1e3:.0f} ms)")
        key = tuple(images[c].stamp for c in self.camera_names) + (state.stamp,)
        if require_new and key == self._last_key:
            raise StaleObservation("no_new_data", "no new input since the last inference")
        decoded = {}
        for c in self.camera_names:
            img = images[c].value
            decoded[c] = img() if callable(img) else img
            if isinstance(decoded[c], Exception):
                raise StaleObservation("invalid_frame", f"{c}: {decoded[c]}")
        obs = Observation(images=decoded, state=state.value, instruction=instruction,
                          stamp=min(images[c].stamp for c in self.camera_names), extras={"input_stamps": key})
        try:
            obs.validate(self.camera_names, self.state_dim)
        except ValueError as exc:
            raise StaleObservation("invalid", str(exc)) from exc
        self._last_key = key
        return obs
