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

"""ki_vla.observation: fresh, complete observations only; instruction validation."""
import numpy as np
import pytest

from ki_vla.observation import (InstructionError, ObservationAssembler, StaleObservation,
                                clean_instruction)

CAMS = ("a", "b")


def filled(now=10.0):
    asm = ObservationAssembler(CAMS, 14, max_image_age=0.2, max_state_age=0.1)
    for c in CAMS:
        asm.set_image(c, now - 0.05, np.zeros((8, 8, 3), np.uint8))
    asm.set_state(now - 0.01, np.zeros(14))
    asm.set_instruction("pick")
    return asm


@pytest.mark.parametrize("drop, reason", [("camera", "missing_camera"), ("state", "missing_state"),
                                          ("instruction", "missing_instruction")])
def test_incomplete_refused(drop, reason):
    asm = ObservationAssembler(CAMS, 14, 0.2, 0.1)
    if drop != "camera":
        for c in CAMS:
            asm.set_image(c, 10.0, np.zeros((8, 8, 3), np.uint8))
    if drop != "state":
        asm.set_state(10.0, np.zeros(14))
    if drop != "instruction":
        asm.set_instruction("x")
    with pytest.raises(StaleObservation) as e:
        asm.assemble(10.0)
    assert e.value.reason == reason


def test_fresh_observation_and_stamp():
    asm = filled()
    obs = asm.assemble(10.0)
    assert obs.stamp == pytest.approx(9.95) and obs.instruction == "pick"  # the images' time, not the newer state's
    assert obs.extras["input_stamps"] == pytest.approx((9.95, 9.95, 9.99))
    with pytest.raises(StaleObservation, match="no_new_data"):
        asm.assemble(10.0)
    asm.set_state(10.0, np.ones(14))
    assert asm.assemble(10.0).state[0] == 1.0


def test_stamp_is_the_oldest_image():
    """The scene the policy plans from is as old as its oldest frame: latency is compensated from there."""
    asm = filled()
    asm.set_image("b", 9.90, np.zeros((8, 8, 3), np.uint8))
    asm.set_state(9.999, np.zeros(14))
    assert asm.assemble(10.0).stamp == pytest.approx(9.90)


def test_stale_inputs_refused():
    asm = filled()
    with pytest.raises(StaleObservation, match="stale_camera"):
        asm.assemble(10.3)
    asm = filled()
    with pytest.raises(StaleObservation, match="stale_state"):
        asm.assemble(10.12)


def test_bad_frames_and_state_refused():
    asm = filled()
    asm.set_image("a", 9.99, lambda: ValueError("corrupt"))
    with pytest.raises(StaleObservation, match="invalid_frame"):
        asm.assemble(10.0)
    asm = filled()
    asm.set_image("a", 9.99, np.zeros((8, 8), np.uint8))
    with pytest.raises(StaleObservation, match="invalid"):
        asm.assemble(10.0)
    asm = filled()
    asm.set_state(9.99, np.full(14, np.nan))
    with pytest.raises(StaleObservation, match="NaN"):
        asm.assemble(10.0)


def test_instruction_cleaning():
    assert clean_instruction("  pick   up\nthe cube ", 100) == "pick up the cube"
    for bad in ("", "   \n", None, 3):
        with pytest.raises(InstructionError):
            clean_instruction(bad, 100)
    with pytest.raises(InstructionError, match="max_instruction_chars"):
        clean_instruction("x" * 101, 100)


def test_inputs_stamped_in_the_future_are_refused():
    """A 10 s clock skew must not keep a dead camera 'fresh' for 10 s; a few ms of jitter are fine."""
    asm = filled()
    asm.set_image("b", 20.0, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(StaleObservation, match="b frame is stamped 10.000 s in the future") as e:
        asm.assemble(10.0)
    assert e.value.reason == "future_stamp"
    asm = filled()
    asm.set_state(10.02, np.zeros(14))  # 20 ms ahead: within max_future
    assert asm.assemble(10.0).state.shape == (14,)
    asm.set_state(10.5, np.zeros(14))
    with pytest.raises(StaleObservation, match="joint state is stamped"):
        asm.assemble(10.0)
    with pytest.raises(ValueError, match="max_future"):
        ObservationAssembler(CAMS, 14, 0.2, 0.1, max_future=-1.0)
