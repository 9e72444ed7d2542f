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

"""The ROS 2 package is well-formed and both halves keep their import direction."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# Python modules the code imports -> the rosdep key package.xml declares for them.
ROSDEP_KEYS = {"numpy": "python3-numpy", "yaml": "python3-yaml", "cv2": "python3-opencv", "scipy": "python3-scipy",
               "tqdm": "python3-tqdm", "pandas": "python3-pandas", "matplotlib": "python3-matplotlib",
               "imageio": "python3-imageio", "torch": "python3-pytorch-pip", "transformers": "python3-transformers-pip",
               "rosbags": "python3-rosbags-pip", "mujoco": "python3-mujoco-pip"}
# No rosdep key exists for these (package.xml says so; pip installs them).
PIP_ONLY = {"pyarrow", "av", "gym_aloha", "safetensors", "tokenizers"}


def _package():
    from catkin_pkg.package import parse_package

    return parse_package(str(ROOT / "package.xml"))  # also validates the maintainer email


def test_package_xml_parses_with_catkin_pkg():
    pkg = _package()
    assert pkg.name == "ki_vla_ros"
    assert pkg.package_format == 3
    assert pkg.get_build_type() == "ament_python"
    assert all("@" in m.email for m in pkg.maintainers)


def test_package_xml_declares_every_import():
    """`rosdep install --from-paths` resolves what the code needs: every module imported by the library, the
    nodes and the launch files is a declared ROS package, has its rosdep key declared, or is a known pip-only one."""
    from source_imports import imported_modules

    declared = {d.name for d in _package().exec_depends}
    imported = imported_modules(ROOT / "ki_vla", ROOT / "ki_vla_ros", ROOT / "launch")
    assert PIP_ONLY <= imported and set(ROSDEP_KEYS) <= imported, "a stale entry in this test's tables"
    missing = sorted(ROSDEP_KEYS.get(m, m) for m in imported - PIP_ONLY if ROSDEP_KEYS.get(m, m) not in declared)
    assert missing == [], f"package.xml lacks <exec_depend> for {missing}"
    # the executables the launch files start
    assert "robot_state_publisher" in declared


def test_ki_vla_never_imports_rclpy():
    """Import every ki_vla module in a fresh interpreter and check rclpy never got loaded."""
    code = (
        "import importlib, pkgutil, sys, ki_vla\n"
        "for m in pkgutil.walk_packages(ki_vla.__path__, 'ki_vla.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k == 'rclpy' or k.startswith('rclpy.'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_ki_vla_sources_have_no_rclpy_import():
    offenders = [str(p) for p in (ROOT / "ki_vla").rglob("*.py")
                 if any(line.strip().startswith(("import rclpy", "from rclpy")) for line in p.read_text().splitlines())]
    assert offenders == []


COLCON = shutil.which("colcon", path=os.path.dirname(sys.executable)) or shutil.which("colcon")


@pytest.mark.skipif(COLCON is None, reason="colcon not installed")
def test_colcon_build(tmp_path):
    """Colcon builds the repo as an ament_python package: executables in lib/, data in share/."""
    src = tmp_path / "src" / "ki_vla_ros"
    src.mkdir(parents=True)
    for name in ("package.xml", "setup.py", "setup.cfg", "LICENSE", "resource", "ki_vla", "ki_vla_ros", "launch",
                 "config", "urdf"):
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif p.exists():
            shutil.copy(p, src / name)
    out = subprocess.run([COLCON, "build"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lib = tmp_path / "install" / "ki_vla_ros" / "lib" / "ki_vla_ros"
    share = tmp_path / "install" / "ki_vla_ros" / "share" / "ki_vla_ros"
    for exe in ("ki-vla", "ki-vla-ros", "camera_node", "policy_node", "executor_node"):
        assert (lib / exe).exists(), f"{exe} not installed: {sorted(os.listdir(lib))}"
    assert (share / "package.xml").exists()
    index = tmp_path / "install" / "ki_vla_ros" / "share" / "ament_index" / "resource_index" / "packages" / "ki_vla_ros"
    assert index.exists()
    # What `ros2 run ki_vla_ros ki-vla` does after sourcing the workspace (the ros2 CLI is not on PyPI): find the
    # package's prefix in the ament index and run lib/ki_vla_ros/<executable>, which imports the installed copy.
    script = (". install/setup.sh && "
              f"prefix=$({sys.executable} -c 'from ament_index_python.packages import get_package_prefix as p; "
              "print(p(\"ki_vla_ros\"))') && $prefix/lib/ki_vla_ros/ki-vla --help"
              " && $prefix/lib/ki_vla_ros/ki-vla-ros --help"
              f" && cd / && {sys.executable} -c 'import ki_vla; print(ki_vla.__file__)'")
    run = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH")})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "usage: ki-vla " in run.stdout and "usage: ki-vla-ros " in run.stdout
    assert run.stdout.strip().splitlines()[-1].startswith(str(tmp_path / "install")), run.stdout


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "ki_vla.cli", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ki-vla" in out.stdout


def test_cli_survives_a_subcommand_whose_dependency_is_missing(monkeypatch, capsys):
    """A GPU box without MuJoCo still runs `ki-vla bench`; `ki-vla collect` says what is missing."""
    import importlib

    from ki_vla import cli

    real = importlib.import_module

    def without_mujoco(name, *args, **kwargs):
        if name == "ki_vla.sim.cli":
            raise ModuleNotFoundError("No module named 'mujoco'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_mujoco)
    assert cli.main(["collect", "--out", "somewhere", "--episodes", "3"]) == 2
    assert "collect: unavailable here: No module named 'mujoco'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:  # the other subcommands are still there...
        cli.main(["bench", "--help"])
    assert done.value.code == 0 and "--prefix-tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:  # ...with strict argument checking
        cli.main(["info", "--no-such-flag"])
    assert done.value.code == 2
