"""`make demo`: the end-to-end demo (sim + ROS graph + KI policy + report).

Until the simulation and evaluation pieces exist, this says so plainly instead of printing results.
"""
from __future__ import annotations

import importlib.util
import sys

NEEDED = ("ki_vla.sim.scenes", "ki_vla.eval.sim_cli", "ki_vla.eval.demo", "ki_vla_ros.sim_node")


def main() -> int:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        print("make demo: the end-to-end demo is not built yet (missing: " + ", ".join(missing) + ").\n"
              "It needs the simulation + evaluation issue; no results are produced until then.\n"
              "What works today: `make test`, and the Python API in README.md.")
        return 0
    from ki_vla.eval.demo import run_demo  # the full demo, once the pieces above exist

    return run_demo()


if __name__ == "__main__":
    sys.exit(main())
