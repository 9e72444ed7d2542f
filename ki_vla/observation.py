"""What the policy consumes at inference time, independent of where it came from (ROS, sim, dataset)."""
from __future__ import annotations

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
