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

"""`ki_vla` is a distribution of its own (ki_vla/pyproject.toml): installed alone, without the ROS wheels, it trains.

The fresh venv gets no network: the project's venv lends it every installed distribution except the ROS ones
(ros-* wheels: rclpy, the message packages, the ament index) through a folder of links, and pip installs
`./ki_vla` into it with `--no-index`, so a dependency pyproject.toml forgets to declare, or declares at a version
that is not what we test with, fails the install or the training run here rather than on a GPU cluster.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from source_imports import imported_modules

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "ki_vla" / "pyproject.toml"


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def _requirement_name(spec: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(spec).name.lower().replace("_", "-")


def test_declared_packages_are_the_tree():
    listed = set(_project()["tool"]["setuptools"]["packages"])
    inits = [p.parent.relative_to(ROOT / "ki_vla") for p in (ROOT / "ki_vla").rglob("__init__.py")]
    found = {".".join(("ki_vla", *rel.parts)) for rel in inits if "build" not in rel.parts}
    assert listed == found


def test_every_third_party_import_is_declared():
    project = _project()
    declared = {_requirement_name(s) for s in project["project"]["dependencies"]}
    declared |= {_requirement_name(s) for extra in project["project"]["optional-dependencies"].values() for s in extra}
    owners = importlib.metadata.packages_distributions()
    # ament_index_python is looked up only when ROS is there (ki_vla.paths: a colcon install's share folder)
    optional_ros = {"ament_index_python"}
    missing = {}
    for module in sorted(imported_modules(ROOT / "ki_vla") - optional_ros):
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        assert dists, f"ki_vla imports {module!r}, which no installed distribution provides"
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported by ki_vla but not declared in {PYPROJECT}: {missing}"


def _ros_top_level_entries(site: Path) -> set[str]:
    """The site-packages entries (modules, dist-info, .pth) that belong to the ROS wheels or to this checkout."""
    entries = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if not (name.startswith("ros-") or name in ("ki-vla-ros", "ki-vla")):
            continue
        for f in dist.files or []:
            parts = Path(f).parts
            if parts and parts[0] not in ("..",) and (site / parts[0]).exists():
                entries.add(parts[0])
    # the editable install of this repository (its finder module and .pth) carries the ROS package's name
    entries |= {p.name for p in site.iterdir() if "ki_vla" in p.name}
    return entries


def test_ki_vla_installs_alone_and_trains_without_ros(tmp_path):
    site = Path(sysconfig.get_paths()["purelib"])
    lent = tmp_path / "lent"  # the project venv's distributions, less ROS and this checkout
    lent.mkdir()
    skip = _ros_top_level_entries(site)
    for entry in site.iterdir():
        if entry.name not in skip and entry.name != "__pycache__":
            (lent / entry.name).symlink_to(entry)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    (venv_site / "lent.pth").write_text(f"import site; site.addsitedir({str(lent)!r})\n")
    src = tmp_path / "src" / "ki_vla"  # a copy: building in place would leave build/ and egg-info in the checkout
    shutil.copytree(ROOT / "ki_vla", src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--no-build-isolation", "-q", str(src)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    probe = subprocess.run([str(py), "-c", "import ki_vla, importlib.util; print(ki_vla.__file__); "
                            "print(importlib.util.find_spec('rclpy'))"], cwd=tmp_path, capture_output=True, text=True)
    where, rclpy = probe.stdout.split()
    assert Path(where).is_relative_to(venv) and rclpy == "None", probe.stdout + probe.stderr

    from ki_vla.data.bag import BagConversionConfig, convert_bags
    from ki_vla.testing import write_synthetic_bag

    dataset = convert_bags([write_synthetic_bag(tmp_path / "ep0", duration_s=1.0)], tmp_path / "dataset",
                           BagConversionConfig(image_size=(32, 32)), progress=False)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the recipe by its repository path, from a folder without it: found in the installed package (tiny.yaml names
    # its model config the same way)
    train = subprocess.run([str(venv / "bin" / "ki-vla"), "train", "--config", "config/train/tiny.yaml",
                            f"dataset={dataset}", f"output_dir={out}",
                            "max_steps=2", "batch_size=2", "save_every=2", "log_every=1", "progress=false",
                            "tensorboard=false", "fast_vocab_size=256"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env={**env, "OMP_NUM_THREADS": "1"})
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert (out / "final").is_dir()
