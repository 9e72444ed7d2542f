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

"""MuJoCo sim, scripted demonstrations and `ki-vla collect` (no ROS). Small images, few steps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ki_vla.joints import JOINT_NAMES, NUM_JOINTS
from ki_vla.sim.scenes import (DEFAULT_CAMERAS, FINGER_CLOSED, FINGER_OPEN, BimanualSim, finger_to_gripper,
                               gripper_to_finger)
from ki_vla.sim.scripted import (ArmIK, ScriptedPolicy, gripper_rotation, interpolate_waypoints,
                                 run_scripted_episode, Waypoint)

SMALL = (48, 64)


@pytest.fixture(scope="module")
def cube_env():
    env = BimanualSim("transfer_cube", seed=0, image_size=SMALL)
    yield env
    env.close()


def test_observation_contract(cube_env):
    obs = cube_env.reset(seed=3)
    assert obs["state"].shape == (NUM_JOINTS,) and obs["velocity"].shape == (NUM_JOINTS,)
    assert cube_env.joint_names == JOINT_NAMES
    assert set(obs["images"]) == set(DEFAULT_CAMERAS)
    for img in obs["images"].values():
        assert img.shape == (*SMALL, 3) and img.dtype == np.uint8
    # Different viewpoints see different things.
    imgs = list(obs["images"].values())
    assert not np.array_equal(imgs[0], imgs[1])
    assert obs["instruction"] and obs["step"] == 0 and obs["time"] == 0.0
    # Home pose in our order; grippers normalized nearly closed.
    np.testing.assert_allclose(obs["state"][:6], obs["state"][7:13])
    assert 0.0 < obs["state"][6] < 0.2 and 0.0 < obs["state"][13] < 0.2
    assert cube_env.dt == pytest.approx(0.02)


def test_top_camera_sees_the_red_cube(cube_env):
    cube_env.reset(seed=0)
    img = cube_env.render(("cam_high",))["cam_high"].astype(int)
    red = (img[..., 0] > 150) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red.sum() > 0


def test_gripper_normalization_roundtrip():
    assert gripper_to_finger(0.0) == pytest.approx(FINGER_CLOSED)
    assert gripper_to_finger(1.0) == pytest.approx(FINGER_OPEN)
    x = np.linspace(0, 1, 7)
    np.testing.assert_allclose(finger_to_gripper(gripper_to_finger(x)), x)


def test_step_moves_the_named_joint_only(cube_env):
    obs = cube_env.reset(seed=0, render=False)
    home = obs["state"].copy()
    cmd = home.copy()
    i = JOINT_NAMES.index("left_waist")
    cmd[i] += 0.3
    left_site = ArmIK(cube_env.model, "left")
    right_site = ArmIK(cube_env.model, "right")
    r0 = right_site.forward(home[7:13])[0]
    for _ in range(50):  # 1 s
        obs = cube_env.step(cmd, render=False)
    assert obs["step"] == 50 and obs["time"] == pytest.approx(1.0)
    assert abs(obs["state"][i] - cmd[i]) < 0.03
    assert abs(obs["state"][7] - home[7]) < 0.01  # right waist still
    np.testing.assert_allclose(right_site.forward(obs["state"][7:13])[0], r0, atol=0.01)
    assert left_site.forward(obs["state"][:6])[0][1] > 0.55  # left gripper swung towards +y


def test_gripper_command_opens_and_closes(cube_env):
    obs = cube_env.reset(seed=0, render=False)
    cmd = obs["state"].copy()
    cmd[6] = cmd[13] = 1.0
    for _ in range(60):
        obs = cube_env.step(cmd, render=False)
    assert obs["state"][6] > 0.9 and obs["state"][13] > 0.9
    cmd[6] = 0.0
    for _ in range(60):
        obs = cube_env.step(cmd, render=False)
    assert obs["state"][6] < 0.15 and obs["state"][13] > 0.9


def test_seeded_and_deterministic():
    a = BimanualSim("transfer_color", seed=5, cameras=())
    b = BimanualSim("transfer_color", seed=5, cameras=())
    assert a.instruction == b.instruction
    rng = np.random.default_rng(0)
    cmd0 = a.state()
    for _ in range(30):
        cmd = cmd0 + rng.normal(0, 0.05, NUM_JOINTS)
        sa, sb = a.step(cmd, render=False)["state"], b.step(cmd, render=False)["state"]
        assert np.array_equal(sa, sb)
    pa, pb = a.object_positions(), b.object_positions()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    a.reset(seed=6, render=False)
    assert not np.array_equal(a.object_positions()["box"], pb["box"])
    # Both instructions occur across seeds; cubes are placed apart.
    instructions = set()
    for s in range(12):
        a.reset(seed=s, render=False)
        instructions.add(a.instruction)
        p = a.object_positions()
        assert np.linalg.norm(p["box"][:2] - p["blue_box_body"][:2]) >= 0.09
    assert instructions == {"transfer the red cube", "transfer the blue cube"}
    # reset() without a seed: first the constructor's episode, then a reproducible stream of seeds.
    c, d = BimanualSim("transfer_cube", seed=7, cameras=()), BimanualSim("transfer_cube", seed=7, cameras=())
    p0 = c.object_positions()["box"]
    c.reset(render=False)
    assert c.seed == 7 and np.array_equal(c.object_positions()["box"], p0)
    c.reset(render=False)
    d.reset(render=False)
    d.reset(render=False)
    assert c.seed == d.seed != 7


def test_bad_input_raises_clear_errors(cube_env):
    with pytest.raises(ValueError, match="unknown sim task"):
        BimanualSim("stack_blocks")
    with pytest.raises(ValueError, match="unknown camera"):
        BimanualSim("transfer_cube", cameras=("cam_low_nonexistent",))
    with pytest.raises(ValueError, match="image_size"):
        BimanualSim("transfer_cube", image_size=(4, 4))
    with pytest.raises(ValueError, match="does not divide"):
        BimanualSim("transfer_cube", control_hz=33.0)
    with pytest.raises(ValueError, match="shape"):
        cube_env.step(np.zeros(7))
    with pytest.raises(ValueError, match="NaN"):
        cube_env.step(np.full(NUM_JOINTS, np.nan))
    with pytest.raises(ValueError, match="target"):
        cube_env.reset(seed=0, target="red")
    with pytest.raises(ValueError, match="unknown camera"):
        cube_env.render(("nope",))


def test_ik_roundtrip(cube_env):
    ik = ArmIK(cube_env.model, "right")
    q_true = np.array([0.2, -0.3, 0.5, 0.1, 0.6, -0.2])
    pos, rot = ik.forward(q_true)
    q, res = ik.solve(pos, rot, np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0]))
    assert res < 1e-3
    p2, r2 = ik.forward(q)
    np.testing.assert_allclose(p2, pos, atol=1e-3)
    np.testing.assert_allclose(r2, rot, atol=1e-2)


def test_gripper_rotation_and_interpolation():
    for side in ("left", "right"):
        for pitch, roll in ((0.0, 0.0), (1.0, 0.0), (0.3, np.pi / 2)):
            r = gripper_rotation(side, pitch, roll)
            np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
            assert np.linalg.det(r) == pytest.approx(1.0)
    wps = [Waypoint(0.0, np.zeros(3), gripper_rotation("left", 0.0), 0.0),
           Waypoint(1.0, np.ones(3), gripper_rotation("left", np.pi / 2), 1.0)]
    pos, rot, grip = interpolate_waypoints(wps, 60, 0.02)
    np.testing.assert_allclose(pos[25], 0.5)
    assert grip[25] == pytest.approx(0.5) and grip[-1] == 1.0
    np.testing.assert_allclose(rot[25], gripper_rotation("left", np.pi / 4), atol=1e-9)
    with pytest.raises(ValueError, match="increase"):
        interpolate_waypoints(wps[::-1], 10, 0.02)


@pytest.mark.parametrize("task,seeds", [("transfer_cube", (0, 7)), ("insertion", (0, 7)),
                                        ("transfer_color", (0, 7))])
def test_scripted_policy_succeeds_on_fixed_seeds(task, seeds):
    env = BimanualSim(task, seed=0, cameras=())
    policy = ScriptedPolicy(task)
    for seed in seeds:
        ep = run_scripted_episode(env, policy, seed, render=False)
        assert ep["success"], f"{task} seed {seed}: max reward {ep['max_reward']}"
        assert ep["final_reward"] == env.max_reward
        assert ep["actions"].shape == (env.episode_steps, NUM_JOINTS) == ep["states"].shape
        # Damping near wrist singularities trades a little tracking accuracy (the shared meeting point is one)
        # for never flipping the wrist; the grasp poses themselves are well conditioned and reached closely.
        assert policy.max_ik_residual < 3e-2
        assert np.all((ep["actions"][:, [6, 13]] >= 0) & (ep["actions"][:, [6, 13]] <= 1))
        # Learnable demonstrations: no wrist flip (forearm_roll / wrist_rotate stay off their +-pi limits) and
        # no joint moves more than 0.2 rad in one 20 ms tick.
        arm = np.r_[0:6, 7:13]
        assert np.abs(ep["actions"][:, [3, 5, 10, 12]]).max() < 2.0, f"{task} seed {seed}: wrist flipped"
        assert np.abs(np.diff(ep["actions"][:, arm], axis=0)).max() < 0.2


def test_transfer_color_needs_the_named_cube():
    """Handing over the red cube while the instruction names the blue one is not a success."""
    env = BimanualSim("transfer_color", seed=0, cameras=())
    policy = ScriptedPolicy("transfer_color")
    env.reset(seed=4, target="red", render=False)
    red_plan = policy.plan(env)
    env.reset(seed=4, target="blue", render=False)  # same cube positions, other instruction
    assert env.instruction == "transfer the blue cube"
    rewards = []
    for cmd in red_plan:
        env.step(cmd, render=False)
        rewards.append(env.reward())
    assert max(rewards) < env.max_reward and not env.success()
    # The same plan under the matching instruction succeeds.
    ep = run_scripted_episode(env, policy, 4, render=False, target="red")
    assert ep["success"] and ep["instruction"] == "transfer the red cube"


def test_collect_writes_lerobot_dataset(tmp_path, capsys):
    from ki_vla.cli import main
    from ki_vla.data.lerobot import LeRobotDataset

    out = tmp_path / "ds"
    rc = main(["collect", "--task", "transfer_cube", "--episodes", "1", "--out", str(out),
               "--image-size", "32x48", "--seed", "2", "--no-progress", "--no-video"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kept"] == 1 and summary["discarded"] == 0 and summary["kept_seeds"] == [2]
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 1 and ds.episode_lengths == [400]
    ep = ds.episode(0)
    assert set(ep["images"]) == set(DEFAULT_CAMERAS)
    assert ep["images"]["cam_high"].shape == (400, 32, 48, 3)
    # Frame 0 and state 0 are the reset observation of seed 2 (PNG frames are lossless).
    env = BimanualSim("transfer_cube", seed=2, image_size=(32, 48))
    obs = env.reset(seed=2)
    np.testing.assert_array_equal(ep["images"]["cam_left_wrist"][0], obs["images"]["cam_left_wrist"])
    np.testing.assert_allclose(ep["state"][0], obs["state"], atol=1e-6)
    env.close()


def test_execution_noise_is_smooth_seeded_and_spares_the_grippers():
    from ki_vla.sim.scripted import execution_noise, motion_envelope

    n = execution_noise(3, 20000, 0.05)
    assert np.array_equal(n, execution_noise(3, 20000, 0.05)) and not np.array_equal(n, execution_noise(4, 20000, 0.05))
    assert (n[0] == 0).all() and (n[:, [6, 13]] == 0).all()
    assert 0.04 < n[:, :6].std() < 0.06  # the stationary std asked for
    assert np.abs(np.diff(n[:, 0])).max() < 0.05 * 0.3  # smooth: no white-noise jitter from tick to tick
    still = np.zeros((50, 14))
    assert (motion_envelope(still) == 0).all()  # a plan that stands still gets no noise


def test_noisy_demonstration_keeps_the_plan_as_labels(tmp_path, capsys):
    """DART: the arm executes plan + noise, the recorded actions are the clean plan, and the frames replay the
    noisy execution (the collector checks the replay reaches the recorded final state)."""
    from ki_vla.cli import main
    from ki_vla.data.lerobot import LeRobotDataset

    env = BimanualSim("transfer_cube", seed=0, cameras=(), image_size=(32, 48))
    policy = ScriptedPolicy("transfer_cube")
    clean = run_scripted_episode(env, policy, 2, render=False)
    noisy = run_scripted_episode(env, policy, 2, render=False, action_noise=0.05)
    env.close()
    np.testing.assert_array_equal(noisy["actions"], clean["actions"])
    assert np.abs(noisy["executed"] - noisy["actions"]).max() > 0.02
    assert np.abs(noisy["states"] - clean["states"]).max() > 0.01
    out = tmp_path / "ds"
    assert main(["collect", "--task", "transfer_cube", "--episodes", "1", "--out", str(out), "--image-size", "32x48",
                 "--seed", "2", "--no-progress", "--no-video", "--action-noise", "0.05"]) == 0
    ep = LeRobotDataset(out).episode(0)
    np.testing.assert_allclose(ep["action"], clean["actions"], atol=1e-6)
    assert main(["collect", "--task", "transfer_cube", "--episodes", "1", "--out", str(tmp_path / "bad"),
                 "--action-noise", "2"]) == 2


def test_collect_discards_failures_and_writes_nothing(tmp_path, capsys):
    from ki_vla.cli import main

    out = tmp_path / "ds"
    # 20 ticks are far too short for the script: every attempt fails.
    rc = main(["collect", "--task", "transfer_cube", "--episodes", "1", "--out", str(out), "--image-size",
               "32x48", "--episode-steps", "20", "--max-attempts", "2", "--no-progress"])
    assert rc == 1 and not out.exists()
    assert "only 0/1" in capsys.readouterr().err
    assert main(["collect", "--task", "insertion", "--episodes", "1", "--out", str(out),
                 "--target", "red"]) == 2


def test_collect_bag_mode_roundtrips_through_convert_bag(tmp_path, capsys):
    """`collect --bag` records the robot's topics; converting the bag gives back the episode's data."""
    from ki_vla.cli import main
    from ki_vla.data.bag import BagConversionConfig, convert_bags
    from ki_vla.data.lerobot import LeRobotDataset

    bags = tmp_path / "bags"
    rc = main(["collect", "--task", "transfer_cube", "--episodes", "1", "--bag", str(bags), "--seed", "1",
               "--image-size", "32x48", "--cameras", "cam_high", "--no-progress"])
    assert rc == 0 and json.loads(capsys.readouterr().out.splitlines()[-1])["kept"] == 1
    episode = bags / "episode_000000"
    assert (episode / "metadata.yaml").is_file() and sorted(p.name for p in bags.iterdir()) == ["episode_000000"]
    out = convert_bags([episode], tmp_path / "ds", BagConversionConfig(
        cameras={"cam_high": "/cam_high/image_raw"}, use_videos=False), progress=False)
    ep = LeRobotDataset(out).episode(0)
    env = BimanualSim("transfer_cube", seed=1, cameras=("cam_high",), image_size=(32, 48))
    direct = run_scripted_episode(env, ScriptedPolicy("transfer_cube"), 1, render=False)
    n = len(ep["state"])
    assert n >= 390 and ep["task"] == direct["instruction"]
    np.testing.assert_allclose(ep["state"], direct["states"][:n], atol=1e-5)
    np.testing.assert_allclose(ep["action"], direct["actions"][:n], atol=1e-5)
    np.testing.assert_array_equal(ep["images"]["cam_high"][0], env.reset(seed=1)["images"]["cam_high"])
    env.close()
