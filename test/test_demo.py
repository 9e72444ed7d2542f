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

"""`make demo`'s arguments: its evaluation is eval-sim's, parsed by eval-sim's own parser (the run itself is a
benchmark)."""
from pathlib import Path

from ki_vla.eval.demo import eval_arguments, parse_args


def test_demo_evaluates_realtime_on_unseen_seeds_with_the_chosen_noise_scale():
    args = parse_args(["--eval-episodes", "4", "--noise-scale", "0.3", "--image-size", "96x128"])
    ev = eval_arguments(args, Path("w/train/final"), Path("w/eval"))
    assert (ev.mode, ev.seed, ev.episodes, ev.videos, ev.task) == ("realtime", 1000, 4, 3, "transfer_cube")
    assert (ev.noise_scale, ev.sim_image_size, ev.model, ev.report) == (0.3, (96, 128), "w/train/final", "w/eval")
    assert eval_arguments(parse_args([]), Path("c"), Path("r")).noise_scale is None  # the checkpoint's own
