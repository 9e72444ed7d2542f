"""ament_flake8, the ROS 2 Python style check, at the project's line length (setup.cfg's [flake8] section)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Explicit paths: a checkout also holds .venv, build/ and install/, which are not ours to lint.
PATHS = ["ki_vla", "ki_vla_ros", "test", "bench", "launch", "setup.py"]


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8(monkeypatch):
    from ament_flake8.main import main_with_errors

    monkeypatch.chdir(ROOT)
    rc, errors = main_with_errors(argv=["--config", "setup.cfg", *PATHS])
    assert rc == 0, f"{len(errors)} code style error(s):\n" + "\n".join(errors)
