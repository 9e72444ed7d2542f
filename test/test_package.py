"""The ROS 2 package is well-formed and both halves keep their import direction."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_parses_with_catkin_pkg():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT / "package.xml"))  # also validates the maintainer email
    assert pkg.name == "ki_vla_ros"
    assert pkg.package_format == 3
    assert pkg.get_build_type() == "ament_python"
    deps = {d.name for d in pkg.exec_depends}
    assert {"rclpy", "sensor_msgs", "std_msgs", "trajectory_msgs", "diagnostic_msgs",
            "launch_ros", "robot_state_publisher"} <= deps
    assert all("@" in m.email for m in pkg.maintainers)


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


@pytest.mark.skipif(shutil.which("colcon", path=os.path.dirname(sys.executable)) is None and shutil.which("colcon") is None,
                    reason="colcon not installed")
def test_colcon_build(tmp_path):
    """colcon builds the repo as an ament_python package: executables in lib/, data in share/."""
    src = tmp_path / "src" / "ki_vla_ros"
    src.mkdir(parents=True)
    for name in ("package.xml", "setup.py", "setup.cfg", "resource", "ki_vla", "ki_vla_ros", "launch", "config", "urdf"):
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif p.exists():
            shutil.copy(p, src / name)
    colcon = shutil.which("colcon", path=os.path.dirname(sys.executable)) or shutil.which("colcon")
    out = subprocess.run([colcon, "build"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lib = tmp_path / "install" / "ki_vla_ros" / "lib" / "ki_vla_ros"
    share = tmp_path / "install" / "ki_vla_ros" / "share" / "ki_vla_ros"
    for exe in ("ki-vla", "ki-vla-ros", "camera_node", "policy_node", "executor_node"):
        assert (lib / exe).exists(), f"{exe} not installed: {sorted(os.listdir(lib))}"
    assert (share / "package.xml").exists()
    index = tmp_path / "install" / "ki_vla_ros" / "share" / "ament_index" / "resource_index" / "packages" / "ki_vla_ros"
    assert index.exists()


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "ki_vla.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
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
