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

"""launch/bimanual.launch.py, checked without launch_ros (not on PyPI): it parses; executed against
recording stand-ins for the launch API it starts exactly the graph `ki-vla-ros up` starts; every
executable, parameter file, section and URDF it names exists; the config loads into the node dataclasses."""
import ast
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

from ki_vla_ros.config import NODE_CONFIGS, load_node_config, read_parameter_file
from ki_vla_ros.graph import CORE_NODES, build_plan

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "bimanual.launch.py"
CONFIG = ROOT / "config" / "bimanual.yaml"


def console_scripts() -> set[str]:
    text = (ROOT / "setup.py").read_text()
    return set(re.findall(r'"([\w-]+)\s*=\s*[\w.]+:main"', text))


def test_launch_file_parses():
    tree = ast.parse(LAUNCH.read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs


class _Recorder:
    """Minimal stand-ins for launch / launch_ros classes: they keep their constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stub_modules(values: dict[str, str]) -> dict[str, types.ModuleType]:
    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return values[self.name]

    mods = {}
    launch = types.ModuleType("launch")
    launch.LaunchDescription = type("LaunchDescription", (_Recorder,), {})
    actions = types.ModuleType("launch.actions")
    for name in ("DeclareLaunchArgument", "LogInfo", "OpaqueFunction", "SetEnvironmentVariable", "GroupAction",
                 "Shutdown", "IncludeLaunchDescription"):
        setattr(actions, name, type(name, (_Recorder,), {}))
    subs = types.ModuleType("launch.substitutions")
    subs.LaunchConfiguration = LaunchConfiguration
    sources = types.ModuleType("launch.launch_description_sources")
    sources.PythonLaunchDescriptionSource = type("PythonLaunchDescriptionSource", (_Recorder,), {})
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = type("Node", (_Recorder,), {})
    mods.update({"launch": launch, "launch.actions": actions, "launch.substitutions": subs,
                 "launch.launch_description_sources": sources,
                 "launch_ros": launch_ros, "launch_ros.actions": ros_actions})
    return mods


def run_launch(monkeypatch, **overrides):
    values = {"config": "config/bimanual.yaml", "model": "", "device": "", "use_sim_time": "false", "sim": "false",
              "robot_state_publisher": "true"}
    values.update(overrides)
    for name, mod in _stub_modules(values).items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("bimanual_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    entities = ld.args[0]
    declared = {e.args[0] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert declared == {"config", "model", "device", "use_sim_time", "sim", "robot_state_publisher"}
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    return opaque[0].kwargs["function"](context=None)


def test_launch_starts_the_same_graph_as_up(monkeypatch):
    nodes = [a for a in run_launch(monkeypatch) if type(a).__name__ == "Node"]
    ours = [n for n in nodes if n.kwargs["package"] == "ki_vla_ros"]
    scripts = console_scripts()
    assert {n.kwargs["executable"] for n in ours} == set(CORE_NODES)
    for n in ours:
        assert n.kwargs["executable"] in scripts
        assert n.kwargs["name"] == n.kwargs["executable"]
        params_file = n.kwargs["parameters"][0]
        assert Path(params_file).is_file()
        assert n.kwargs["name"] in read_parameter_file(params_file)
    rsp = [n for n in nodes if n.kwargs["package"] == "robot_state_publisher"]
    assert len(rsp) == 1
    desc = rsp[0].kwargs["parameters"][0]["robot_description"]
    assert desc.lstrip().startswith("<?xml") and "left_waist" in desc
    plan = build_plan(CONFIG)
    assert [p.name for p in plan.processes if p.name in CORE_NODES] == list(CORE_NODES)


def test_launch_arguments_reach_the_nodes(monkeypatch):
    actions = run_launch(monkeypatch, model="config/model/tiny.yaml", device="cpu", use_sim_time="true", sim="true")
    nodes = {a.kwargs["name"]: a for a in actions if type(a).__name__ == "Node"}
    policy = nodes["policy_node"].kwargs["parameters"][1]
    assert Path(policy["model"]).is_file() and policy["device"] == "cpu" and policy["use_sim_time"] is True
    assert nodes["executor_node"].kwargs["parameters"][1]["use_sim_time"] is True
    for name in ("camera_node", "policy_node", "executor_node"):   # one exits: the launch ends (like `up`)
        assert type(nodes[name].kwargs["on_exit"]).__name__ == "Shutdown"
    if importlib.util.find_spec("ki_vla_ros.sim_node") is not None:
        assert "sim_node" in nodes and "sim_node" in console_scripts()
        # no use_sim_time
        assert nodes["sim_node"].kwargs["parameters"] == [nodes["camera_node"].kwargs["parameters"][0]]
    else:
        assert any(type(a).__name__ == "LogInfo" for a in actions)


def test_config_loads_into_node_dataclasses():
    for name, cls in NODE_CONFIGS.items():
        cfg = load_node_config(cls, CONFIG, name)       # strict: a typo in the YAML fails here
        assert isinstance(cfg, cls)
    ex = load_node_config(NODE_CONFIGS["executor_node"], CONFIG, "executor_node")
    assert (ROOT / ex.urdf_path).is_file() and len(ex.joint_scale) == 14
    pol = load_node_config(NODE_CONFIGS["policy_node"], CONFIG, "policy_node")
    assert (ROOT / pol.model).is_file()


def test_unknown_parameter_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("executor_node:\n  ros__parameters:\n    control_hzz: 50.0\n")
    with pytest.raises(ValueError, match="control_hzz"):
        load_node_config(NODE_CONFIGS["executor_node"], bad, "executor_node")


def test_up_dry_run_and_sim_flag(capsys):
    from ki_vla_ros.cli import main

    assert main(["up", "--dry-run", "--model", "config/model/tiny.yaml", "--sim"]) == 0
    out = capsys.readouterr().out
    for name in CORE_NODES:
        assert f"ki_vla_ros.{name}" in out
    if importlib.util.find_spec("ki_vla_ros.sim_node") is None:
        assert "sim is unavailable" in out
    else:
        assert "ki_vla_ros.sim_node" in out
        assert "use_sim_time:=true" in out       # the sim owns the clock
    assert main(["up", "--dry-run", "--config", "/nonexistent.yaml"]) == 2


def test_up_stops_the_graph_when_a_node_dies(tmp_path):
    """A node that exits (here: a config error in the executor) takes the graph down with a non-zero code."""
    import subprocess
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["executor_node"]["ros__parameters"]["merge_strategy"] = "no_such_strategy"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "up", "--config", str(bad), "--duration", "60"],
                         cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode != 0
    assert "executor_node exited with code 2" in out.stdout, out.stdout[-2000:]
    assert "unknown merge strategy" in out.stderr + out.stdout


def test_launch_resolves_relative_paths_like_up(monkeypatch, tmp_path):
    """`model:=checkpoints/run3` means ./checkpoints/run3 for both `ros2 launch` and `ki-vla-ros up`."""
    run = tmp_path / "checkpoints" / "run3"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("variant: ki\n")
    monkeypatch.chdir(tmp_path)
    actions = run_launch(monkeypatch, model="checkpoints/run3")
    policy = {a.kwargs["name"]: a for a in actions if type(a).__name__ == "Node"}["policy_node"]
    assert Path(policy.kwargs["parameters"][1]["model"]) == run
    plan = build_plan(CONFIG, model="checkpoints/run3")
    argv = next(p.argv for p in plan.processes if p.name == "policy_node")
    assert f"model:={run}" in argv


def test_large_data_transport_on_every_node_of_the_graph(monkeypatch):
    """LARGE_DATA (user data over SHM/TCP only) for the nodes that move images and for the executor, which must share
    their transport (on the default ones it received nothing from them: 0/50 in a realtime evaluation);
    robot_state_publisher (TF only, read by nobody in the graph) keeps the default; a transport the user exported
    holds for all. `up` and the launch file agree."""
    from ki_vla_ros.graph import graph_env

    monkeypatch.delenv("FASTDDS_BUILTIN_TRANSPORTS", raising=False)
    for name in ("camera_node", "policy_node", "executor_node", "sim_node"):
        assert graph_env(name)["FASTDDS_BUILTIN_TRANSPORTS"] == "LARGE_DATA"
    nodes = {n.kwargs["name"]: n.kwargs.get("additional_env", {})
             for n in run_launch(monkeypatch, sim="true") if type(n).__name__ == "Node"}
    assert nodes["robot_state_publisher"] == {}
    assert (nodes["camera_node"] == nodes["policy_node"] == nodes["executor_node"]
            == {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"})
    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")
    assert graph_env("executor_node")["FASTDDS_BUILTIN_TRANSPORTS"] == "UDPv4"
    assert graph_env("camera_node")["FASTDDS_BUILTIN_TRANSPORTS"] == "UDPv4"


GAZEBO_LAUNCH = ROOT / "launch" / "bimanual_gazebo.launch.py"


def run_gazebo_launch(monkeypatch, tmp_path, **overrides):
    """bimanual_gazebo.launch.py against the stand-ins; ros_gz_sim's share folder is a stand-in too."""
    import ament_index_python.packages as index

    values = {"config": "config/bimanual.yaml", "controllers": "", "model": "", "device": "",
              "world": "empty.sdf", "gui": "false"}
    values.update(overrides)
    for name, mod in _stub_modules(values).items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(index, "get_package_share_directory", lambda package: str(tmp_path / package))
    spec = importlib.util.spec_from_file_location("bimanual_gazebo_launch", GAZEBO_LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entities = module.generate_launch_description().args[0]
    declared = {e.args[0] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert declared == set(values)
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    return opaque[0].kwargs["function"](context=None)


def test_gazebo_launch_builds_the_ros2_control_description_and_our_graph(monkeypatch, tmp_path):
    actions = run_gazebo_launch(monkeypatch, tmp_path, model="config/model/tiny.yaml")
    nodes = {(a.kwargs["package"], a.kwargs["executable"]): a for a in actions if type(a).__name__ == "Node"}
    desc = nodes[("robot_state_publisher", "robot_state_publisher")].kwargs["parameters"][0]["robot_description"]
    assert "gz_ros2_control/GazeboSimSystem" in desc
    controllers = str(ROOT / "config" / "ros2_controllers.yaml")
    assert f"<parameters>{controllers}</parameters>" in desc
    spawned = nodes[("controller_manager", "spawner")].kwargs["arguments"]
    assert spawned == ["joint_state_broadcaster", "left_arm_controller", "right_arm_controller",
                       "--param-file", controllers]
    bridged = nodes[("ros_gz_bridge", "parameter_bridge")].kwargs["arguments"]
    assert "/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock" in bridged and len(bridged) == 4
    includes = [a for a in actions if type(a).__name__ == "IncludeLaunchDescription"]
    ours = [i for i in includes if i.args[0].args[0].endswith("bimanual.launch.py")]
    assert len(ours) == 1 and Path(ours[0].args[0].args[0]).is_file()
    arguments = dict(ours[0].kwargs["launch_arguments"])
    assert arguments["robot_state_publisher"] == "false" and arguments["use_sim_time"] == "true"
    assert arguments["sim"] == "false" and arguments["model"] == "config/model/tiny.yaml"


def test_gazebo_launch_picks_the_position_controllers_for_a_position_config(monkeypatch, tmp_path):
    import yaml

    params = yaml.safe_load(CONFIG.read_text())
    shared = params["/**"]["ros__parameters"]
    shared["command_interface"] = "position"
    shared["command_topics"] = ["left_arm_controller/commands", "right_arm_controller/commands"]
    config = tmp_path / "position.yaml"
    config.write_text(yaml.safe_dump(params))
    actions = run_gazebo_launch(monkeypatch, tmp_path, config=str(config))
    spawner = [a for a in actions if type(a).__name__ == "Node" and a.kwargs["executable"] == "spawner"][0]
    assert spawner.kwargs["arguments"][-1] == str(ROOT / "config" / "ros2_controllers_position.yaml")
