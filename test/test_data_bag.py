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

"""rosbag2 (mcap and sqlite3) -> LeRobot v3: resampling, joint reordering, action sources, bad bags, the CLI.

Bags are real rosbag2 recordings written with `rosbags` (CDR-serialized sensor_msgs/Image, JointState,
std_msgs/String, trajectory_msgs/JointTrajectory from the ROS 2 Kilted typestore).

Synthetic timing (`write_synthetic_bag`, start t=0): joint states every 10 ms at t, arm commands every 20 ms
at t+1 ms, camera image m at 40 m + 2 ms. All streams are complete from 2 ms, so control ticks (50 Hz) fall
at 2 + 20 k ms and "nearest previous sample" picks joint sample 2k (t=20k ms), command k, and image k // 2.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.typesys import Stores, get_typestore

from ki_vla import cli
from ki_vla.data.bag import (
    IMAGE_TYPE,
    JOINT_STATE_TYPE,
    BagConversionConfig,
    BagConversionError,
    convert_bags,
    plan_bag,
)
from ki_vla.data.lerobot import LeRobotDataset
from ki_vla.joints import JOINT_NAMES
from ki_vla.testing import synthetic_image_value, synthetic_joint_value, write_synthetic_bag

START = 1_700_000_000_000_000_000
CAMS = {"cam_high": "/cam_high/image_raw", "cam_left_wrist": "/cam_left_wrist/image_raw"}
REVERSED = list(range(13, -1, -1))
TS = get_typestore(Stores.ROS2_KILTED)


def expected_state(n: int) -> np.ndarray:
    k = np.arange(n)
    return np.array([[synthetic_joint_value(j, 0.02 * kk) for j in range(14)] for kk in k])


def assert_no_output(tmp_path: Path) -> None:
    left = [p.name for p in tmp_path.iterdir() if not p.name.startswith("bag")]
    assert left == [], left


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_convert_resamples_and_reorders(tmp_path: Path, storage: str) -> None:
    bags = [
        write_synthetic_bag(tmp_path / "bag0", storage=storage, duration_s=0.5, cameras=CAMS, joint_order=REVERSED),
        write_synthetic_bag(
            tmp_path / "bag1", storage=storage, duration_s=0.3, cameras=CAMS, instruction="insert the peg",
            joint_order=[7, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6], encoding="bgr8",
        ),
    ]
    assert (bags[0] / ("bag0.mcap" if storage == "mcap" else "bag0.db3")).is_file()
    out = convert_bags(bags, tmp_path / "ds", BagConversionConfig(cameras=CAMS), progress=False)
    ds = LeRobotDataset(out)
    assert ds.fps == 50 and ds.num_episodes == 2 and ds.camera_names == list(CAMS)
    assert ds.state_names == list(JOINT_NAMES)
    # Ticks from 2 ms to the earliest stream end (joint states end at duration): floor((d - 0.002) * 50) + 1.
    assert ds.episode_lengths == [25, 15]
    for i, (length, task) in enumerate([(25, "transfer the red cube"), (15, "insert the peg")]):
        ep = ds.episode(i)
        assert ep["task"] == task
        np.testing.assert_allclose(ep["state"], expected_state(length), atol=1e-6)
        np.testing.assert_allclose(ep["action"], expected_state(length) + 0.5, atol=1e-6)
        for c, cam in enumerate(CAMS):
            want = np.array([synthetic_image_value(c, k // 2) for k in range(length)], dtype=float)
            got = ep["images"][cam].reshape(length, -1, 3).mean(axis=1)
            np.testing.assert_allclose(got, want, atol=3)  # uniform frames survive the codec nearly exactly


def test_no_command_topic_uses_next_state_mono8_header_stamps(tmp_path: Path) -> None:
    bag = write_synthetic_bag(
        tmp_path / "bag", storage="sqlite3", duration_s=0.3, command_hz=None,
        cameras={"cam_high": "/cam_high/image_raw"}, encoding="mono8", joint_order=REVERSED,
    )
    cfg = BagConversionConfig(cameras={"cam_high": "/cam_high/image_raw"}, use_header_stamps=True)
    plan = plan_bag(bag, cfg)
    assert plan.action_source == "next_state"
    out = convert_bags([bag], tmp_path / "ds", cfg, progress=False)
    ep = LeRobotDataset(out).episode(0)
    state = expected_state(15)
    np.testing.assert_allclose(ep["state"], state, atol=1e-6)
    np.testing.assert_allclose(ep["action"][:-1], state[1:], atol=1e-6)  # action k = state at tick k + 1
    np.testing.assert_allclose(ep["action"][-1], state[-1], atol=1e-6)
    img = ep["images"]["cam_high"]
    assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() <= 3  # mono8 -> grey RGB
    np.testing.assert_allclose(img[:, 0, 0, 0], [synthetic_image_value(0, k // 2)[0] for k in range(15)], atol=3)


def test_compressed_images_resized_png_columns_and_name_map(tmp_path: Path) -> None:
    names = ["L" + n for n in JOINT_NAMES[:7]] + list(JOINT_NAMES[7:])
    extra_joint = TS.types[JOINT_STATE_TYPE](
        header=TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                               frame_id=""),
        name=["left_finger"], position=np.array([9.0]), velocity=np.array([], dtype=np.float64),
        effort=np.array([], dtype=np.float64),
    )
    bag = write_synthetic_bag(
        tmp_path / "bag", storage="mcap", duration_s=0.2, cameras={"cam_high": "/cam_high/image_raw"},
        compressed=True, joint_names=names, extra=[("/joint_states", JOINT_STATE_TYPE, START + 5_000_000, extra_joint)],
    )
    cfg = BagConversionConfig(
        cameras={"cam_high": "/cam_high/image_raw"}, image_size=(16, 24), use_videos=False,
        joint_name_map={"L" + n: n for n in JOINT_NAMES[:7]}, ignore_extra_joints=True,
    )
    ds = LeRobotDataset(convert_bags([bag], tmp_path / "ds", cfg, progress=False))
    ep = ds.episode(0)
    assert ep["images"]["cam_high"].shape == (10, 16, 24, 3)
    np.testing.assert_array_equal(ep["images"]["cam_high"][:, 3, 5],
                                  [synthetic_image_value(0, k // 2) for k in range(10)])
    np.testing.assert_allclose(ep["state"], expected_state(10), atol=1e-6)


def bad_image() -> object:
    T = TS.types
    return T[IMAGE_TYPE](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""),
        height=32, width=32, encoding="rgb8", is_bigendian=0, step=96, data=np.zeros(10, dtype=np.uint8),
    )


def truncate(bag: Path) -> Path:
    f = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return bag


BAD_BAGS = {
    "missing camera topic": (
        dict(cameras={"cam_high": "/cam_high/image_raw"}),
        r"missing topic /cam_left_wrist/image_raw or /cam_left_wrist/image_raw/compressed \(camera cam_left_wrist\)",
    ),
    "missing instruction": (dict(instruction=None), r"missing topic /instruction \(task instruction\)"),
    "truncated mcap": (dict(storage="mcap", _truncate=True),
                       r"cannot be opened as a rosbag2 recording, truncated or corrupt"),
    "truncated sqlite3": (dict(storage="sqlite3", _truncate=True),
                          r"cannot be opened as a rosbag2 recording, truncated or corrupt"),
    "wrong type": (
        dict(instruction=None, extra=[("/instruction", JOINT_STATE_TYPE, START, None)]),
        r"topic /instruction has type sensor_msgs/msg/JointState, expected std_msgs/msg/String",
    ),
    "unknown joint names": (
        dict(joint_names=[*JOINT_NAMES[:2], "left_elbow_typo", *JOINT_NAMES[3:]]),
        r"unknown joint name\(s\) \['left_elbow_typo'\] on /joint_states",
    ),
    "undecodable image mid-episode": (
        dict(extra=[("/cam_high/image_raw", IMAGE_TYPE, START + 101_000_000, "bad_image")]),
        r"image on /cam_high/image_raw \(encoding 'rgb8'\) cannot be decoded",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BAGS))
def test_bad_bag_gives_one_named_error_and_no_output(tmp_path: Path, case: str) -> None:
    kwargs, pattern = BAD_BAGS[case]
    kwargs = dict(kwargs)
    do_truncate = kwargs.pop("_truncate", False)
    extra = []
    for topic, msgtype, t, msg in kwargs.pop("extra", []):
        if msg is None:
            msg = TS.types[JOINT_STATE_TYPE](
                header=TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                                       frame_id=""),
                name=[], position=np.array([], dtype=np.float64), velocity=np.array([], dtype=np.float64),
                effort=np.array([], dtype=np.float64),
            )
        elif msg == "bad_image":
            msg = bad_image()
        extra.append((topic, msgtype, t, msg))
    good = write_synthetic_bag(tmp_path / "bag_good", duration_s=0.2, cameras=CAMS)
    bad = write_synthetic_bag(tmp_path / "bag_bad", duration_s=0.2, **{"cameras": CAMS, **kwargs}, extra=extra)
    if do_truncate:
        truncate(bad)
    with pytest.raises(BagConversionError, match=pattern) as info:
        convert_bags([good, bad], tmp_path / "ds", BagConversionConfig(cameras=CAMS), progress=False)
    assert str(bad) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert_no_output(tmp_path)


def test_streams_that_never_overlap_and_missing_bag(tmp_path: Path) -> None:
    with pytest.raises(BagConversionError, match="does not exist"):
        convert_bags([tmp_path / "bag_nope"], tmp_path / "ds", progress=False)
    late = write_synthetic_bag(tmp_path / "bag_late", duration_s=0.2, cameras=CAMS, camera_start_s=1.0)
    with pytest.raises(BagConversionError, match="streams never overlap in time"):
        convert_bags([late], tmp_path / "ds", BagConversionConfig(cameras=CAMS), progress=False)
    assert_no_output(tmp_path)


def test_config_yaml(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"convert_bag": {"fps": 25, "image_size": [24, 32],
                                                                     "cameras": CAMS}}))
    cfg = BagConversionConfig.from_yaml(tmp_path / "c.yaml")
    assert cfg.fps == 25 and cfg.image_size == (24, 32) and cfg.cameras == CAMS
    assert cfg.state_topic == "/joint_states" and cfg.joint_names == list(JOINT_NAMES)
    (tmp_path / "bad.yaml").write_text("fsp: 50\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['fsp'\]"):
        BagConversionConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="fps must be a positive integer"):
        BagConversionConfig(fps=0)


def test_cli_convert_bag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bags = [str(write_synthetic_bag(tmp_path / f"bag{i}", storage=s, duration_s=0.2, cameras=CAMS))
            for i, s in enumerate(["mcap", "sqlite3"])]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"cameras": CAMS, "fps": 25}))
    rc = cli.main(["convert-bag", *bags, "--out", str(tmp_path / "ds"), "--config", str(tmp_path / "c.yaml"),
                   "--image-size", "16x16", "--quiet"])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    ds = LeRobotDataset(tmp_path / "ds")
    assert ds.fps == 25 and ds.num_episodes == 2 and ds.episode(0)["images"]["cam_high"].shape[1:] == (16, 16, 3)
    # Existing output, then a bad bag: one line on stderr, exit status 2, nothing written.
    assert cli.main(["convert-bag", *bags, "--out", str(tmp_path / "ds"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    truncate(Path(bags[1]))
    assert cli.main(["convert-bag", *bags, "--out", str(tmp_path / "ds2"), "--config", str(tmp_path / "c.yaml"),
                     "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "truncated or corrupt" in err and bags[1] in err
    assert not (tmp_path / "ds2").exists()
