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

"""`ki-vla eval-bag`: metric functions on hand-made cases with known answers, the replay loop with an oracle
predictor, the report writer's atomicity, and the command end to end on real (synthetic) bags."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ki_vla.data.bag import BagConversionConfig, convert_bags
from ki_vla.testing import write_synthetic_bag
from ki_vla.data.lerobot import ACTION_KEY, LeRobotDataset
from ki_vla.data.samples import ChunkDataset
from ki_vla.eval import offline
from ki_vla.eval.report import Report, line_plot, to_jsonable

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "config/model/tiny.yaml")
H = 50


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> Path:
    """A folder with two recordings (mcap and sqlite3) of 60 and 50 frames at 50 Hz."""
    d = tmp_path_factory.mktemp("eval_bags") / "bags"
    d.mkdir()
    write_synthetic_bag(d / "ep0", storage="mcap", duration_s=1.2)
    write_synthetic_bag(d / "ep1", storage="sqlite3", duration_s=1.0, instruction="transfer the blue cube")
    return d


@pytest.fixture(scope="module")
def dataset(bags, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_ds") / "dataset"
    return convert_bags(sorted(bags.iterdir()), out, BagConversionConfig(image_size=(32, 32), use_videos=False),
                        progress=False)


# ---- metric functions: known answers -------------------------------------------------------------------
def test_constant_offset_gives_that_mae_and_masks_padding():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(6, 5, 3))
    valid = np.ones((6, 5), bool)
    valid[4, 3:] = False  # a frame near the episode end
    valid[:, 4] = False  # the last step is padding everywhere
    pred = target + 0.25
    pred[~valid] = 1e6  # whatever a policy predicts past the end must not count
    err = offline.chunk_errors(pred, target, valid)
    assert err["mae"] == pytest.approx(0.25) and err["mse"] == pytest.approx(0.0625)
    np.testing.assert_allclose(err["per_joint_mae"], 0.25)
    np.testing.assert_allclose(err["mae_by_step"][:4], 0.25)
    assert math.isnan(err["mae_by_step"][4])
    assert err["valid_by_step"].tolist() == [6, 6, 6, 5, 0]


def test_error_grows_with_step_and_differs_per_joint():
    target = np.zeros((4, 10, 2))
    steps = np.arange(10)[None, :, None]
    pred = target + 0.1 * steps * np.array([1.0, 3.0])  # joint 1 drifts three times as fast
    err = offline.chunk_errors(pred, target, np.ones((4, 10), bool))
    np.testing.assert_allclose(err["mae_by_step"], 0.1 * np.arange(10) * 2.0)  # mean of 1x and 3x
    np.testing.assert_allclose(err["per_joint_mae"], [0.45, 1.35])
    np.testing.assert_allclose(err["per_joint_mse"],
                               [0.01 * np.mean(np.arange(10) ** 2), 0.09 * np.mean(np.arange(10) ** 2)])


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="must both be"):
        offline.chunk_errors(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="valid has shape"):
        offline.chunk_errors(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), np.ones((2, 4), bool))


def _chunks_from_trajectory(traj: np.ndarray, frames: list[int], h: int) -> np.ndarray:
    """Chunks that agree exactly with one underlying trajectory (padded by its last value)."""
    idx = np.minimum(np.asarray(frames)[:, None] + np.arange(h)[None, :], len(traj) - 1)
    return traj[idx]


def test_consistency_of_identical_overlaps_is_zero_and_of_shifted_ones_the_shift():
    traj = np.cumsum(np.random.default_rng(1).normal(size=(40, 3)), axis=0)
    frames = [0, 5, 10, 15]
    pred = _chunks_from_trajectory(traj, frames, h=8)
    episode = np.zeros(4, np.int64)
    valid = np.ones((4, 8), bool)
    out = offline.chunk_consistency(pred, valid, episode, np.asarray(frames))
    assert out["mean_abs_diff"] == 0.0 and out["pairs"] == 3 and out["overlap_steps"] == 3 * 3
    shifted = pred.copy()
    shifted[1::2] += 0.5  # every other chunk disagrees by 0.5 on every step
    out = offline.chunk_consistency(shifted, valid, episode, np.asarray(frames))
    assert out["mean_abs_diff"] == pytest.approx(0.5)
    np.testing.assert_allclose(out["per_joint"], 0.5)


def test_consistency_pairs_only_overlapping_chunks_of_one_episode_and_masks_the_end():
    pred = np.zeros((4, 6, 2))
    pred[1] = 1.0
    pred[3, 2:] = 7.0  # chunk 3's steps past its episode end (masked below) disagree wildly
    episode = np.array([0, 1, 2, 2])
    frame = np.array([0, 0, 0, 2])  # chunks 0 and 1 are in different episodes: never compared
    valid = np.ones((4, 6), bool)
    valid[3, 2:] = False
    out = offline.chunk_consistency(pred, valid, episode, frame)
    assert out["pairs"] == 1 and out["overlap_steps"] == 2 and out["mean_abs_diff"] == 0.0
    far = offline.chunk_consistency(pred[2:], valid[2:], episode[2:], np.array([0, 6]))  # stride >= horizon
    assert far["pairs"] == 0 and math.isnan(far["mean_abs_diff"])


def test_latency_percentiles_use_full_batches():
    lat = offline.latency_summary(np.array([10.0, 20.0, 30.0, 40.0, 1.0]), np.array([4, 4, 4, 4, 1]), batch_size=4)
    # the short call is left out
    assert lat["batch_ms"]["p50"] == pytest.approx(25.0) and lat["batch_ms"]["max"] == 40.0
    assert lat["per_chunk_ms"]["p50"] == pytest.approx(5.0) and lat["calls"] == 5 and lat["batch_size"] == 4
    from ki_vla.eval.percentiles import percentile_summary

    assert math.isnan(percentile_summary([])["p99"])


def test_hold_baseline_is_zero_for_a_robot_that_stands_still():
    state = np.arange(6, dtype=float).reshape(2, 3)
    target = np.repeat(state[:, None, :], 4, axis=1)
    base = offline.hold_baseline(state, target, np.ones((2, 4), bool))
    assert base["mae"] == 0.0
    with pytest.raises(ValueError, match="hold baseline"):
        offline.hold_baseline(np.zeros((2, 5)), target, np.ones((2, 4), bool))


# ---- the replay loop with an oracle ----------------------------------------------------------------------
def test_replay_with_an_oracle_shifted_by_a_constant(dataset):
    """A predictor that returns the recorded future + 0.3 scores MAE 0.3 and perfect consistency; it sees
    only the observation (episode/frame ids), so the loop's targets and masks are checked independently."""
    ds = LeRobotDataset(dataset)
    chunks = ChunkDataset(ds, H, ["cam_high"], (32, 32))
    actions = ds.column(ACTION_KEY)
    rows = {e: ds.episode_rows(i) for i, e in enumerate(ds.episode_indices)}
    seen: list[set] = []

    def oracle(observations):
        seen.append(set(observations[0]))
        out = []
        for o in observations:
            start, stop = rows[o["episode_index"]]
            idx = np.minimum(start + o["frame_index"] + np.arange(H), stop - 1)
            out.append(actions[idx] + 0.3)
        return np.stack(out)

    indices = offline.select_frames(chunks, stride=7)
    assert [chunks.locate(i)[1] for i in indices] == list(range(0, 60, 7)) + list(range(0, 50, 7))
    result = offline.run_open_loop(chunks, oracle, indices, batch_size=4, progress=False)
    assert not any("actions" in keys for keys in seen)
    metrics = offline.summarize(result, 4, ds.action_names, dict(zip(ds.episode_indices, ds.episode_lengths)))
    assert metrics["mae"] == pytest.approx(0.3, abs=1e-5) and metrics["mse"] == pytest.approx(0.09, abs=1e-5)
    np.testing.assert_allclose(metrics["per_joint_mae"], 0.3, atol=1e-5)
    assert (metrics["consistency"]["mean_abs_diff"] == pytest.approx(0.0, abs=1e-6)
            and metrics["consistency"]["pairs"] == 15)
    assert metrics["frames_evaluated"] == 17 and metrics["episodes_evaluated"] == 2
    assert [e["length"] for e in metrics["per_episode"]] == [60, 50]
    # the last frames' chunks run past the episode end: later steps rest on fewer frames
    assert metrics["valid_by_step"][0] == 17 and metrics["valid_by_step"][-1] == 3
    assert metrics["latency_ms"]["calls"] == 5 and metrics["hold_baseline"]["mae"] > 0.3
    assert len(offline.select_frames(chunks, 1, max_frames=3)) == 3
    with pytest.raises(ValueError, match="predictor returned shape"):
        offline.run_open_loop(chunks, lambda obs: np.zeros((len(obs), H, 3)), indices[:2], progress=False)


# ---- report writer ---------------------------------------------------------------------------------------
def test_report_is_written_atomically_and_refuses_foreign_folders(tmp_path):
    r = Report("t")
    r.table(["a", "b"], [["x", float("nan")], ["y", 1.23456]])
    r.figure(line_plot([1, 2, 3], {"s": [1.0, 2.0, np.nan]}, title="t", xlabel="x", ylabel="y"), "p.png", "cap")
    out = r.write(tmp_path / "rep", {"v": np.float32(1.5), "n": float("nan"), "arr": np.arange(3)})
    assert json.loads((out / "metrics.json").read_text()) == {"v": 1.5, "n": None, "arr": [0, 1, 2]}
    md = (out / "report.md").read_text()
    assert "| y | 1.235 |" in md and "| x | n/a |" in md and "![cap](p.png)" in md
    assert (out / "p.png").read_bytes()[:4] == b"\x89PNG"

    broken = Report("broken")
    broken.add_file("data.bin", "not bytes")  # fails while the new folder is being built
    with pytest.raises(TypeError):
        broken.write(out, {"v": 2})
    assert json.loads((out / "metrics.json").read_text())["v"] == 1.5  # the old report is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temp folder left behind

    Report("again").write(out, {"v": 3})
    assert json.loads((out / "metrics.json").read_text()) == {"v": 3} and not (out / "p.png").exists()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="refusing to replace"):
        Report("x").write(tmp_path / "work", {})
    with pytest.raises(TypeError, match="cannot write"):
        to_jsonable({"x": object()})


# ---- the command end to end ------------------------------------------------------------------------------
def _finite_numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _finite_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _finite_numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def test_eval_bag_on_recorded_bags_writes_a_report(bags, tmp_path, capsys):
    from ki_vla.cli import main

    report = tmp_path / "report"
    args = ["eval-bag", "--model", TINY, str(bags), "--report", str(report), "--stride", "5", "--num-steps", "1",
            "--batch-size", "8", "--quiet"]
    assert main(args) == 0
    assert {p.name for p in report.iterdir()} == {"metrics.json", "report.md", "error_by_step.png", "per_joint_mae.png",
                                                  "trajectories.png"}
    m = json.loads((report / "metrics.json").read_text())
    for key in ("model", "model_variant", "random_weights", "inputs", "episodes", "frames", "frames_evaluated",
                "device", "torch_version", "mae", "mse", "mae_by_step", "per_joint", "consistency", "latency_ms",
                "latency_ms_p50", "latency_ms_p99", "per_episode", "hold_baseline"):
        assert key in m, key
    assert m["random_weights"] is True and m["input_kind"] == "bags" and m["episodes"] == 2 and m["frames"] == 110
    assert m["frames_evaluated"] == 12 + 10 and len(m["mae_by_step"]) == H and m["latency_ms"]["batch_size"] == 8
    assert set(m["per_joint"]) == {f"{s}_{j}" for s in ("left", "right") for j in
                                   ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate",
                                    "gripper")}
    assert m["consistency"]["pairs"] == 20
    numbers = _finite_numbers({k: m[k] for k in ("mae", "mse", "mae_by_step", "per_joint", "consistency",
                                                 "latency_ms")})
    assert numbers and all(math.isfinite(x) for x in numbers) and m["mae"] > 0
    md = (report / "report.md").read_text()
    assert "random weights" in md and "variant **ki**" in md and "(trajectories.png)" in md
    out = capsys.readouterr().out
    assert "MAE" in out and "latency p50" in out and str(report / "report.md") in out

    # the converted dataset directly, a second run over the first report (it is replaced)
    assert main(["eval-bag", "--model", TINY, str(bags / "ep1"), "--report", str(report), "--max-frames", "3",
                 "--num-steps", "1", "--stride", "20", "--quiet"]) == 0
    m = json.loads((report / "metrics.json").read_text())
    assert m["frames_evaluated"] == 3 and m["episodes"] == 1 and m["consistency"]["pairs"] == 2


def test_eval_bag_on_a_dataset_with_a_trained_checkpoint(dataset, tmp_path):
    from ki_vla.cli import main
    from ki_vla.train.config import TrainConfig
    from ki_vla.train.trainer import Trainer

    Trainer(TrainConfig(model=TINY, dataset=str(dataset), output_dir=str(tmp_path / "run"), max_steps=2, batch_size=4,
                        progress=False, tensorboard=False, fast_vocab_size=256)).train()
    report = tmp_path / "report"
    assert main(["eval-bag", "--model", str(tmp_path / "run" / "final"), str(dataset), "--report", str(report),
                 "--max-frames", "6", "--stride", "10", "--num-steps", "1", "--batch-size", "1", "--quiet"]) == 0
    m = json.loads((report / "metrics.json").read_text())
    assert m["random_weights"] is False and m["normalization_stats"] is True and m["dataset"] == str(dataset)
    assert m["latency_ms"]["calls"] == 6 and m["latency_ms"]["batch_size"] == 1
    assert "trained weights" in (report / "report.md").read_text()


def test_bad_inputs_exit_2_with_a_clear_message(bags, dataset, tmp_path, capsys):
    from ki_vla.cli import main

    def fails(args: list[str], *needles: str) -> None:
        assert main(["eval-bag", *args, "--report", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, err

    fails(["--model", str(tmp_path / "nope"), str(dataset)], "expected a checkpoint folder or a model .yaml")
    fails(["--model", TINY, str(tmp_path / "missing_bag")], "does not exist")
    (tmp_path / "empty").mkdir()
    fails(["--model", TINY, str(tmp_path / "empty")], "neither a LeRobot dataset")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, bag\n")
    fails(["--model", TINY, str(corrupt)], f"bag {corrupt}")
    fails(["--model", TINY, str(dataset), str(bags / "ep0")], "give one LeRobot dataset")
    fails(["--model", TINY, str(dataset), "--stride", "0"], "--stride must be >= 1")
    other = tmp_path / "other.yaml"
    other.write_text((ROOT / "config/model/tiny.yaml").read_text().replace("cam_right_wrist]", "cam_low]"))
    fails(["--model", str(other), str(dataset)], "missing ['cam_low']")
    fails(["--model", str(other), str(bags / "ep0")], "/cam_low/image_raw")  # the bag lacks the model's camera topic
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["eval-bag", "--model", TINY, str(dataset), "--report", str(busy), "--quiet"]) == 2
    assert "refusing to replace" in capsys.readouterr().err and (busy / "notes.txt").exists()
    import torch

    if not torch.cuda.is_available():
        fails(["--model", TINY, str(dataset), "--device", "cuda"], "no CUDA device")
    assert not (tmp_path / "r").exists()


def test_policy_predictor_is_seeded(dataset):
    """Same seed, same chunks (reports are reproducible); another seed, other flow-matching noise."""
    import warnings

    from ki_vla.model.policy import KIPolicy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = KIPolicy.load(TINY)
    chunks = ChunkDataset(LeRobotDataset(dataset), H, policy.cfg.camera_names, (32, 32))
    obs = [offline._observation(chunks[i]) for i in (0, 5)]
    a, b, c = (offline.policy_predictor(policy, num_steps=1, seed=s)(obs) for s in (3, 3, 4))
    assert a.shape == (2, H, 14) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
