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

"""`ki-vla SUBCOMMAND ...`: one entry point; each subcommand lives beside the code it drives.

A subcommand module exposes `help: str`, `add_arguments(parser)` and `run(args) -> int`. It is named
`<package>/cli.py` for the package's one command (`ki_vla.train.cli`, which torchrun also runs), or
`<package>/cli/<command>.py` for a package with several (`ki_vla.eval.cli.sim`).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys

# name -> module. Listed here so `ki-vla --help` is complete; a module that is not part of this
# checkout is left out of the parser rather than offered and then failing.
SUBCOMMANDS = {
    "fit-tokenizer": "ki_vla.tokenizer.cli",
    "info": "ki_vla.model.cli",
    "convert-bag": "ki_vla.data.cli",
    "train": "ki_vla.train.cli",
    "collect": "ki_vla.sim.cli",
    "eval-bag": "ki_vla.eval.cli.bag",
    "eval-sim": "ki_vla.eval.cli.sim",
    "eval-rollout": "ki_vla.eval.cli.rollout",
    "learning-curve": "ki_vla.eval.cli.curve",
    "bench": "ki_vla.infer.cli",
    "study": "ki_vla.study.cli",
}


def parse_image_size(text: str) -> tuple[int, int]:
    """'240x320' (height x width; also 'X', ',' or a space between) -> (240, 320), for every --*image-size flag."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,\s]\s*(\d+)\s*", text)
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise argparse.ArgumentTypeError(f"image size must be HEIGHTxWIDTH, e.g. 240x320, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ki-vla", description="Knowledge-insulated VLA: data, training, evaluation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue
        try:
            module = importlib.import_module(module_name)
            arguments = argparse.ArgumentParser(add_help=False)
            module.add_arguments(arguments)
        except ImportError as exc:
            # A machine set up for one job (a GPU box for `bench` or `train`) need not have every subcommand's
            # dependencies (MuJoCo for `collect`, PyAV for datasets): the others still work, this one says why not.
            _add_unavailable(sub, name, exc)
            continue
        text = module.help.replace("%", "%%")  # argparse formats help strings with %
        p = sub.add_parser(name, help=text, description=text, parents=[arguments])
        p.set_defaults(_run=module.run)
    return parser


def _add_unavailable(sub: argparse._SubParsersAction, name: str, exc: ImportError) -> None:
    reason = f"unavailable here: {exc} (install the project's requirements.txt)"
    p = sub.add_parser(name, help=reason, description=reason)

    def run(args: argparse.Namespace) -> int:
        print(f"ki-vla {name}: {reason}", file=sys.stderr)
        return 2

    p.set_defaults(_run=run, _unavailable=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # an unavailable command's options are unknown: let it explain
    if extra and not getattr(args, "_unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad input from the user: one clear line, no traceback
        print(f"ki-vla {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine said no (disk full, permissions): one line, exit 1
        print(f"ki-vla {args.command}: error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
