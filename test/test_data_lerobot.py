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

"""LeRobot datasets: v3.0 write -> read round trips (video and PNG image columns), v2.1 read, stats, atomicity."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ki_vla.data.lerobot import format as lr_format, reader as lr_reader
from ki_vla.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from ki_vla.data.video import VideoEncoder, av1_support, probe_codec
from ki_vla.joints import JOINT_NAMES

H, W = 32, 32
CAMS = ["cam_high", "cam_left_wrist"]


def smooth_frames(length: int, seed: int) -> np.ndarray:
    """Frames a lossy codec reproduces closely: smooth gradients that change per frame."""
    y, x = np.mgrid[0:H, 0:W]
    out = np.empty((length, H, W, 3), dtype=np.uint8)
    for t in range(length):
        out[t, ..., 0] = x * 3 + t * 5 + seed * 10  # <= 93 + 90 + 60: no wrap-around edges
        out[t, ..., 1] = y * 4 + seed * 20
        out[t, ..., 2] = 40 + 3 * t
    return out


def make_episodes(n: int = 3, base_len: int = 12) -> list[dict]:
    rng = np.random.default_rng(0)
    eps = []
    for e in range(n):
        length = base_len + 3 * e
        eps.append(
            {
                "images": {cam: smooth_frames(length, e + 3 * c) for c, cam in enumerate(CAMS)},
                "state": rng.normal(size=(length, 14)).astype(np.float32),
                "action": rng.normal(size=(length, 14)).astype(np.float32),
                "task": ["transfer the red cube", "insert the peg"][e % 2],
            }
        )
    return eps


def write(root: Path, eps: list[dict], **kwargs) -> Path:
    w = LeRobotDatasetWriter.create(
        root, fps=50, camera_names=CAMS, image_shape=(H, W, 3), state_names=JOINT_NAMES, action_names=JOINT_NAMES,
        **kwargs,
    )
    for ep in eps:
        w.add_episode(images=ep["images"], state=ep["state"], action=ep["action"], task=ep["task"])
    return w.finalize()


def assert_round_trip(ds: LeRobotDataset, eps: list[dict], image_tol: int) -> None:
    assert ds.num_episodes == len(eps)
    assert ds.num_frames == sum(len(e["state"]) for e in eps)
    for i, ep in enumerate(eps):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["state"], ep["state"])
        np.testing.assert_array_equal(got["action"], ep["action"])
        assert got["task"] == ep["task"]
        np.testing.assert_allclose(got["timestamps"], np.arange(len(ep["state"])) / 50.0, atol=1e-6)
        for cam in CAMS:
            diff = np.abs(got["images"][cam].astype(int) - ep["images"][cam].astype(int))
            assert got["images"][cam].shape == ep["images"][cam].shape
            assert diff.max() <= image_tol, (cam, i, diff.max())
            assert diff.mean() < 3


def test_video_round_trip_v3_layout(tmp_path: Path) -> None:
    eps = make_episodes()
    root = write(tmp_path / "ds", eps)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 3 and info["total_tasks"] == 2 and info["fps"] == 50
    feat = info["features"]["observation.images.cam_high"]
    assert feat["dtype"] == "video" and feat["shape"] == [H, W, 3]
    expected_codec = "av1" if av1_support()["encode"] else "h264"
    assert feat["info"]["video.codec"] == expected_codec
    # One mp4 per camera holding all episodes, addressed by from/to timestamps in meta/episodes.
    mp4s = sorted(p.relative_to(root).as_posix() for p in root.glob("videos/**/*.mp4"))
    assert mp4s == [f"videos/observation.images.{c}/chunk-000/file-000.mp4" for c in sorted(CAMS)]
    assert probe_codec(root / mp4s[0]) in ("libdav1d", "av1", "libaom-av1", "h264")
    epi = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pandas()
    assert epi["length"].tolist() == [12, 15, 18]
    assert epi["dataset_from_index"].tolist() == [0, 12, 27]
    np.testing.assert_allclose(epi["videos/observation.images.cam_high/from_timestamp"], [0, 12 / 50, 27 / 50])
    np.testing.assert_allclose(epi["videos/observation.images.cam_high/to_timestamp"], [12 / 50, 27 / 50, 45 / 50])
    assert list(epi["tasks"][1]) == ["insert the peg"]
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert dict(zip(tasks.index, tasks["task_index"])) == {"transfer the red cube": 0, "insert the peg": 1}
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert {"observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index"} <= set(
        data.column_names
    )
    assert data["index"].to_pylist() == list(range(45))

    ds = LeRobotDataset(root)
    assert ds.version == "v3.0" and ds.fps == 50
    assert ds.camera_names == CAMS
    assert ds.state_names == list(JOINT_NAMES) and ds.action_names == list(JOINT_NAMES)
    assert ds.tasks == ["transfer the red cube", "insert the peg"]
    assert_round_trip(ds, eps, image_tol=16)


def test_forced_h264_and_partial_camera_decode(tmp_path: Path) -> None:
    eps = make_episodes(2)
    root = write(tmp_path / "ds", eps, vcodec="h264")
    assert json.loads((root / "meta/info.json").read_text())["features"]["observation.images.cam_high"]["info"][
        "video.codec"
    ] == "h264"
    ds = LeRobotDataset(root)
    ep = ds.episode(1, cameras=["cam_left_wrist"])
    assert list(ep["images"]) == ["cam_left_wrist"]
    assert np.abs(ep["images"]["cam_left_wrist"].astype(int) - eps[1]["images"]["cam_left_wrist"]).max() <= 16
    with pytest.raises(ValueError, match="unknown camera"):
        ds.episode(0, cameras=["cam_nope"])


def test_png_image_columns_round_trip_exact(tmp_path: Path) -> None:
    eps = make_episodes(2)
    root = write(tmp_path / "ds", eps, use_videos=False)
    assert not (root / "videos").exists()
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["observation.images.cam_high"]["dtype"] == "image"
    schema = pq.read_schema(root / "data/chunk-000/file-000.parquet")
    assert schema.field("observation.images.cam_high").type == pa.struct([("bytes", pa.binary()),
                                                                          ("path", pa.string())])
    cell = pq.read_table(root / "data/chunk-000/file-000.parquet")["observation.images.cam_high"][0].as_py()
    assert cell["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    assert_round_trip(LeRobotDataset(root), eps, image_tol=0)


def test_streamed_frames_and_file_rollover(tmp_path: Path) -> None:
    """Frames may be an iterator (bag conversion streams them); tiny size limits force several data files."""
    eps = make_episodes(3)
    w = LeRobotDatasetWriter.create(
        tmp_path / "ds", fps=50, camera_names=CAMS, image_shape=(H, W, 3), state_names=JOINT_NAMES,
        action_names=JOINT_NAMES, data_file_size_mb=1e-6, video_file_size_mb=1e-6, vcodec="h264",
    )
    for ep in eps:
        w.add_episode({c: iter(list(f)) for c, f in ep["images"].items()}, ep["state"], ep["action"], ep["task"])
    root = w.finalize()
    assert len(list(root.glob("data/chunk-000/*.parquet"))) == 3
    assert len(list(root.glob("videos/observation.images.cam_high/chunk-000/*.mp4"))) == 3
    assert_round_trip(LeRobotDataset(root), eps, image_tol=16)


def test_stats_are_exact_and_lerobot_shaped(tmp_path: Path) -> None:
    eps = make_episodes()
    ds = LeRobotDataset(write(tmp_path / "ds", eps, vcodec="h264"))
    raw = json.loads((ds.root / "meta/stats.json").read_text())
    all_state = np.concatenate([e["state"] for e in eps]).astype(np.float64)
    all_action = np.concatenate([e["action"] for e in eps]).astype(np.float64)
    for key, arr in (("observation.state", all_state), ("action", all_action)):
        s = ds.stats[key]
        np.testing.assert_allclose(s["mean"], arr.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s["std"], arr.std(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s["min"], arr.min(0))
        np.testing.assert_allclose(s["max"], arr.max(0))
        np.testing.assert_allclose(s["q01"], np.quantile(arr, 0.01, axis=0), rtol=1e-6)
        np.testing.assert_allclose(s["q99"], np.quantile(arr, 0.99, axis=0), rtol=1e-6)
        assert raw[key]["count"] == [45]
        assert len(raw[key]["q50"]) == 14
    img = ds.stats["observation.images.cam_high"]
    assert img["mean"].shape == (3, 1, 1)
    frames = np.concatenate([e["images"]["cam_high"] for e in eps]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(img["mean"].reshape(3), frames.mean(0), atol=1e-6)
    assert 0.0 <= img["min"].min() and img["max"].max() <= 1.0
    # Per-episode stats live in meta/episodes like LeRobot v3 writes them.
    epi = pq.read_table(ds.root / "meta/episodes/chunk-000/file-000.parquet").to_pandas()
    np.testing.assert_allclose(np.stack(epi["stats/action/mean"][0]), eps[0]["action"].mean(0), rtol=1e-5, atol=1e-6)


def test_exception_mid_finalize_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eps = make_episodes(1)
    w = LeRobotDatasetWriter.create(
        tmp_path / "ds", fps=50, camera_names=CAMS, image_shape=(H, W, 3), state_names=JOINT_NAMES,
        action_names=JOINT_NAMES,
    )
    w.add_episode(**{k: eps[0][k] for k in ("images", "state", "action", "task")})
    assert any(p.name.startswith(".ds.partial-") for p in tmp_path.iterdir())

    def boom(self: LeRobotDatasetWriter) -> None:
        (self.tmp / "meta").mkdir(exist_ok=True)
        (self.tmp / "meta" / "info.json").write_text("{")  # half-written, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(LeRobotDatasetWriter, "_write_meta", boom)
    with pytest.raises(OSError, match="disk full"):
        w.finalize()
    assert list(tmp_path.iterdir()) == []  # no dataset and no temp folder


def test_context_manager_aborts_on_error_and_refuses_existing(tmp_path: Path) -> None:
    eps = make_episodes(1)
    with pytest.raises(RuntimeError):
        with LeRobotDatasetWriter.create(
            tmp_path / "ds", fps=50, camera_names=CAMS, image_shape=(H, W, 3), state_names=JOINT_NAMES,
            action_names=JOINT_NAMES,
        ) as w:
            w.add_episode(**{k: eps[0][k] for k in ("images", "state", "action", "task")})
            raise RuntimeError("crash while recording")
    assert list(tmp_path.iterdir()) == []
    root = write(tmp_path / "ds", eps, vcodec="h264")
    with pytest.raises(ValueError, match="already exists"):
        write(root, eps)
    write(root, make_episodes(2), vcodec="h264", overwrite=True)
    assert LeRobotDataset(root).num_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_add_episode_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no encoder"):
        LeRobotDatasetWriter.create(
            tmp_path / "x", fps=50, camera_names=CAMS, image_shape=(H, W, 3), state_names=JOINT_NAMES,
            action_names=JOINT_NAMES, vcodec="nonsense",
        )
    assert list(tmp_path.iterdir()) == []
    w = LeRobotDatasetWriter.create(
        tmp_path / "ds", fps=50, camera_names=CAMS, image_shape=(H, W, 3), state_names=JOINT_NAMES,
        action_names=JOINT_NAMES,
    )
    ep = make_episodes(1)[0]
    with pytest.raises(ValueError, match="action must be"):
        w.add_episode(ep["images"], ep["state"], ep["action"][:, :7], ep["task"])
    with pytest.raises(ValueError, match="but action has"):
        w.add_episode(ep["images"], ep["state"], ep["action"][:-1], ep["task"])
    with pytest.raises(ValueError, match="exactly the cameras"):
        w.add_episode({"cam_high": ep["images"]["cam_high"]}, ep["state"], ep["action"], ep["task"])
    with pytest.raises(ValueError, match="uint8"):
        bad = dict(ep["images"], cam_high=ep["images"]["cam_high"].astype(np.float32))
        w.add_episode(bad, ep["state"], ep["action"], ep["task"])
    with pytest.raises(ValueError, match="task"):
        w.add_episode(ep["images"], ep["state"], ep["action"], "  ")
    with pytest.raises(ValueError, match="NaN"):
        w.add_episode(ep["images"], np.full_like(ep["state"], np.nan), ep["action"], ep["task"])
    # Array errors are caught before writing: the writer is still usable.
    w.add_episode(ep["images"], ep["state"], ep["action"], ep["task"])
    # A streamed camera that runs short is only noticed mid-write: the whole dataset is discarded.
    with pytest.raises(ValueError, match="yields 3 frames"):
        w.add_episode({c: iter(list(f[:3])) for c, f in ep["images"].items()}, ep["state"], ep["action"], ep["task"])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="already finalized or aborted"):
        w.finalize()


def write_v21(root: Path, eps: list[dict]) -> None:
    """A LeRobot v2.1 dataset as the v2.1 codebase wrote it: one parquet and one mp4 per episode, jsonl meta,
    list (not fixed-size) vector columns, {"motors": [...]} names, per-episode stats and no stats.json."""
    (root / "meta").mkdir(parents=True)
    cam_key = "observation.images.cam_high"
    features = {
        "observation.state": {"dtype": "float32", "shape": [14], "names": {"motors": list(JOINT_NAMES)}},
        "action": {"dtype": "float32", "shape": [14], "names": {"motors": list(JOINT_NAMES)}},
        cam_key: {
            "dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channel"],
            "info": {"video.fps": 50.0, "video.codec": "h264", "video.pix_fmt": "yuv420p", "has_audio": False},
        },
        **{k: {"dtype": "int64", "shape": [1], "names": None}
           for k in ("frame_index", "episode_index", "index", "task_index")},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    }
    tasks = sorted({e["task"] for e in eps})
    info = {
        "codebase_version": "v2.1", "robot_type": "aloha", "total_episodes": len(eps),
        "total_frames": sum(len(e["state"]) for e in eps), "total_tasks": len(tasks), "total_videos": len(eps),
        "total_chunks": 1, "chunks_size": 1000, "fps": 50, "splits": {"train": f"0:{len(eps)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    }
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                   for i, t in enumerate(tasks)))
    ep_lines, stat_lines, index = [], [], 0
    for e, ep in enumerate(eps):
        n = len(ep["state"])
        ep_lines.append(json.dumps({"episode_index": e, "tasks": [ep["task"]], "length": n}) + "\n")
        stat_lines.append(json.dumps({"episode_index": e, "stats": {
            "action": {"min": ep["action"].min(0).tolist(), "max": ep["action"].max(0).tolist(),
                       "mean": ep["action"].mean(0).tolist(), "std": ep["action"].std(0).tolist(), "count": [n]},
        }}) + "\n")
        table = pa.table({
            "observation.state": pa.array(ep["state"].tolist(), type=pa.list_(pa.float32())),
            "action": pa.array(ep["action"].tolist(), type=pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / 50),
            "frame_index": pa.array(np.arange(n)),
            "episode_index": pa.array(np.full(n, e)),
            "index": pa.array(np.arange(index, index + n)),
            "task_index": pa.array(np.full(n, tasks.index(ep["task"]))),
        })
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        enc = VideoEncoder(root / f"videos/chunk-000/{cam_key}/episode_{e:06d}.mp4", 50, W, H, codec="h264")
        for frame in ep["images"]["cam_high"]:
            enc.add(frame)
        enc.close()
        index += n
    (root / "meta/episodes.jsonl").write_text("".join(ep_lines))
    (root / "meta/episodes_stats.jsonl").write_text("".join(stat_lines))


def test_read_v21_layout(tmp_path: Path) -> None:
    eps = make_episodes(2)
    write_v21(tmp_path / "v21", eps)
    ds = LeRobotDataset(tmp_path / "v21")
    assert ds.version == "v2.1" and ds.camera_names == ["cam_high"]
    assert ds.state_names == list(JOINT_NAMES)
    assert ds.tasks == sorted({e["task"] for e in eps})
    for i, ep in enumerate(eps):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["state"], ep["state"])
        np.testing.assert_array_equal(got["action"], ep["action"])
        assert got["task"] == ep["task"]
        assert np.abs(got["images"]["cam_high"].astype(int) - ep["images"]["cam_high"]).max() <= 16
    # Stats aggregated from episodes_stats.jsonl (exact mean/std by the parallel formula).
    all_action = np.concatenate([e["action"] for e in eps]).astype(np.float64)
    np.testing.assert_allclose(ds.stats["action"]["mean"], all_action.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.stats["action"]["std"], all_action.std(0), rtol=1e-5, atol=1e-6)


def test_reader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        LeRobotDataset(tmp_path / "nope")
    (tmp_path / "bad/meta").mkdir(parents=True)
    with pytest.raises(ValueError, match="info.json is missing"):
        LeRobotDataset(tmp_path / "bad")
    (tmp_path / "bad/meta/info.json").write_text(json.dumps({"codebase_version": "v1.6", "fps": 50}))
    with pytest.raises(ValueError, match="unsupported LeRobot codebase_version 'v1.6'"):
        LeRobotDataset(tmp_path / "bad")
    root = write(tmp_path / "ds", make_episodes(1), vcodec="h264")
    (root / "videos/observation.images.cam_high/chunk-000/file-000.mp4").unlink()
    with pytest.raises(ValueError, match="does not exist"):
        LeRobotDataset(root).episode(0)


def test_feature_names_forms() -> None:
    assert lr_reader._feature_names({"shape": [2], "names": ["a", "b"]}, "x") == ["a", "b"]
    assert lr_reader._feature_names({"shape": [2], "names": {"motors": ["a", "b"]}}, "x") == ["a", "b"]
    assert lr_reader._feature_names({"shape": [2], "names": None}, "x") == ["x_0", "x_1"]


def test_read_hand_built_v3_with_gaps_in_concatenated_video(tmp_path: Path) -> None:
    """A v3 folder assembled independently of our writer, as LeRobot tools produce it: pandas-written tasks
    with an unnamed index, list (not fixed-size) vectors, and episodes addressed inside one mp4 by
    from/to timestamps that are not back to back (ep 1 starts at frame 15 after a 5-frame gap)."""
    root = tmp_path / "v3"
    frames = smooth_frames(30, 0)
    enc = VideoEncoder(root / "videos/observation.images.top/chunk-000/file-000.mp4", 50, W, H, codec="mpeg4")
    for f in frames:
        enc.add(f)
    enc.close()
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    info = {
        "codebase_version": "v3.0", "robot_type": "aloha", "total_episodes": 2, "total_frames": 25, "total_tasks": 2,
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": 50,
        "splits": {"train": "0:2"}, "data_path": lr_format.DEFAULT_DATA_PATH,
        "video_path": lr_format.DEFAULT_VIDEO_PATH,
        "features": {
            "observation.images.top": {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
                                       "info": {"video.codec": "mpeg4", "video.fps": 50}},
            "observation.state": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
            "action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
            **{k: {"dtype": "int64", "shape": [1], "names": None}
               for k in ("frame_index", "episode_index", "index", "task_index")},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info))
    pd.DataFrame({"task_index": [0, 1]}, index=["pick", "place"]).to_parquet(root / "meta/tasks.parquet")
    pd.DataFrame({
        "episode_index": [0, 1], "tasks": [["place"], ["pick"]], "length": [10, 15],
        "data/chunk_index": [0, 0], "data/file_index": [0, 0], "dataset_from_index": [0, 10],
        "dataset_to_index": [10, 25],
        "videos/observation.images.top/chunk_index": [0, 0], "videos/observation.images.top/file_index": [0, 0],
        "videos/observation.images.top/from_timestamp": [0.0, 0.3],
        "videos/observation.images.top/to_timestamp": [0.2, 0.6],
    }).to_parquet(root / "meta/episodes/chunk-000/file-000.parquet")
    rows = [(0, t, 1) for t in range(10)] + [(1, t, 0) for t in range(15)]
    pd.DataFrame({
        "observation.state": [np.array([e, t], dtype=np.float32) for e, t, _ in rows],
        "action": [np.array([e, -t], dtype=np.float32) for e, t, _ in rows],
        "timestamp": np.array([t / 50 for _, t, _ in rows], dtype=np.float32),
        "frame_index": [t for _, t, _ in rows], "episode_index": [e for e, _, _ in rows],
        "index": list(range(25)), "task_index": [k for _, _, k in rows],
    }).iloc[::-1].to_parquet(root / "data/chunk-000/file-000.parquet")  # row order must not matter
    ds = LeRobotDataset(root)
    assert ds.tasks == ["pick", "place"] and ds.stats == {}
    ep1 = ds.episode(1)
    assert ep1["task"] == "pick" and ep1["state"][:, 1].tolist() == list(range(15))
    # MPEG-4 part 2 at 32x32 is coarse, so check which source frame each decoded frame is closest to.
    assert nearest_source_frames(ep1["images"]["top"], frames) == list(range(15, 30))
    assert ds.episode(0)["task"] == "place"
    assert nearest_source_frames(ds.episode(0)["images"]["top"], frames) == list(range(10))


def nearest_source_frames(decoded: np.ndarray, source: np.ndarray) -> list[int]:
    err = ((decoded[:, None].astype(float) - source[None].astype(float)) ** 2).mean(axis=(2, 3, 4))
    return err.argmin(axis=1).tolist()
