"""`make demo` entry point (see ki_vla.eval.demo for what it runs)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from ki_vla.eval.demo import run_demo

    return run_demo(argv)


if __name__ == "__main__":
    sys.exit(main())
