"""Scripted sim episodes as rosbag2 recordings (mcap or sqlite3) with the topics a real robot has.

`ki-vla collect --bag DIR` writes one bag per successful episode, so the path real users take
(record bags on the robot -> `ki-vla convert-bag` -> train; `ki-vla eval-bag BAG`) can be exercised
without a robot. The messages are exactly what sim_node and the executor put on the wire for the same
episode, written directly with `rosbags` (pure Python, no ROS install):

* `/joint_states` (sensor_msgs/JointState, the 14 names, positions and velocities) every control tick;
* `/<cam>/image_raw` (sensor_msgs/Image rgb8) at `camera_hz`;
* `/left_arm_controller/joint_trajectory`, `/right_arm_controller/joint_trajectory`
  (trajectory_msgs/JointTrajectory as the executor sends them: stamp 0, one point at time_from_start dt)
  `command_delay` after the observation they answer;
* `/instruction` (std_msgs/String) once at the start.

Times are sim time (header stamps and receive times alike) from `start_s`, as a recording of a sim run
with use_sim_time would have them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ki_vla.joints import JOINT_NAMES, LEFT_JOINTS, RIGHT_JOINTS
from ki_vla.sim.scenes import BimanualSim

STORAGES = ("mcap", "sqlite3")


def write_episode_bag(path: str | Path, env: BimanualSim, actions: np.ndarray, seed: int, *,
                      target: str | None = None, cameras: Sequence[str] | None = None, camera_hz: float = 25.0,
                      command_delay: float = 0.001, start_s: float = 1.0, storage: str = "mcap") -> Path:
    """Replay `actions` from `env.reset(seed)` and record it as a rosbag2 at `path` (must not exist).

    Messages are streamed into the writer tick by tick, so memory does not grow with episode length.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    cams = tuple(env.config.cameras if cameras is None else cameras)
    every = env.config.control_hz / camera_hz if camera_hz > 0 else 0
    if camera_hz < 0 or (camera_hz > 0 and abs(every - round(every)) > 1e-6):
        raise ValueError(f"camera_hz ({camera_hz}) must divide the control rate ({env.config.control_hz}) or be 0")
    every = int(round(every))
    if not 0 <= command_delay < env.dt:
        raise ValueError(f"command_delay must be in [0, {env.dt}) s, got {command_delay}")
    path = Path(path)
    if path.exists():
        raise ValueError(f"bag {path} already exists")

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    empty = np.array([], dtype=np.float64)

    def stamp(t_ns: int) -> Any:
        return T["builtin_interfaces/msg/Time"](sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)

    def header(t_ns: int, frame: str = "") -> Any:
        return T["std_msgs/msg/Header"](stamp=stamp(t_ns), frame_id=frame)

    dt_ns = int(round(env.dt * 1e9))
    start_ns = int(round(start_s * 1e9))
    delay_ns = int(round(command_delay * 1e9))
    topics = {"joints": ("/joint_states", "sensor_msgs/msg/JointState"),
              "left": ("/left_arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory"),
              "right": ("/right_arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory"),
              "instruction": ("/instruction", "std_msgs/msg/String")}
    topics.update({cam: (f"/{cam}/image_raw", "sensor_msgs/msg/Image") for cam in cams})
    obs = env.reset(seed=seed, target=target, render=False)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {k: writer.add_connection(topic, msgtype, typestore=ts) for k, (topic, msgtype) in topics.items()}

        def put(key: str, t_ns: int, msg: Any) -> None:
            writer.write(conns[key], t_ns, ts.serialize_cdr(msg, topics[key][1]))

        put("instruction", start_ns, T["std_msgs/msg/String"](data=env.instruction))
        for k in range(len(actions)):
            t_ns = start_ns + k * dt_ns
            put("joints", t_ns, T["sensor_msgs/msg/JointState"](
                header=header(t_ns), name=list(JOINT_NAMES), position=np.asarray(obs["state"], dtype=np.float64),
                velocity=np.asarray(obs["velocity"], dtype=np.float64), effort=empty))
            if every and k % every == 0:
                for cam, img in env.render(cams).items():
                    h, w = img.shape[:2]
                    put(cam, t_ns, T["sensor_msgs/msg/Image"](
                        header=header(t_ns, f"{cam}_optical_frame"), height=h, width=w, encoding="rgb8",
                        is_bigendian=0, step=w * 3, data=np.ascontiguousarray(img).reshape(-1)))
            for key, names, cols in (("left", LEFT_JOINTS, slice(0, 7)), ("right", RIGHT_JOINTS, slice(7, 14))):
                point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=np.asarray(actions[k, cols], dtype=np.float64), velocities=empty,
                    accelerations=empty, effort=empty,
                    time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=dt_ns))
                put(key, t_ns + delay_ns, T["trajectory_msgs/msg/JointTrajectory"](
                    header=header(0), joint_names=list(names), points=[point]))
            obs = env.step(actions[k], render=False)
    return path
