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

"""Evaluation report folders: `report.md` + PNG plots + `metrics.json` (+ any extra files, e.g. videos).

Shared by `ki-vla eval-bag`, `eval-sim` and the demo, so it knows nothing about what is being evaluated:
callers add headings, tables, figures and files, then `write()` the folder.

Why the care:
* The folder is built in a temp dir beside the target and renamed into place, so a crash (or Ctrl-C) midway
  leaves the previous report or the new one, never a mix of both that someone might read numbers from.
* An existing folder is replaced only if it looks like a report (holds report.md or metrics.json) or is
  empty: `--report .` by mistake must not wipe a working directory.
* Plots use matplotlib's object API on the Agg canvas (no pyplot, no global backend switch): it works headless,
  in threads, and does not disturb a caller that uses another backend.
* metrics.json is strict JSON (NaN/inf become null), so any JSON reader can load it.
"""
from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ki_vla.atomic import atomic_dir

REPORT_MD = "report.md"
METRICS_JSON = "metrics.json"
_REPORT_MARKERS = (REPORT_MD, METRICS_JSON)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data from numpy arrays/scalars, paths, tuples and dataclass-free dicts; NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} to metrics.json")


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a Markdown table: `digits` significant digits, 'n/a' for None/NaN."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.{digits}g}"
    return str(value)


def _md_cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


# ---- figures -------------------------------------------------------------------------------------------
def new_figure(width: float = 7.0, height: float = 4.0) -> Figure:
    """A Figure attached to an Agg canvas (see the module docstring for why not pyplot)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def line_plot(x: Sequence[float] | np.ndarray, series: Mapping[str, Sequence[float] | np.ndarray], *, title: str,
              xlabel: str, ylabel: str) -> Figure:
    """One line per named series over a shared x (e.g. error by horizon step, model vs baseline)."""
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for label, y in series.items():
        ax.plot(np.asarray(x), np.asarray(y, np.float64), label=label, marker="." if len(x) <= 60 else None)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return fig


def bar_plot(labels: Sequence[str], series: Mapping[str, Sequence[float] | np.ndarray], *, title: str,
             ylabel: str) -> Figure:
    """Grouped bars: one group per label (e.g. joint), one bar per named series."""
    fig = new_figure(max(7.0, 0.5 * len(labels) * max(1, len(series))), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(np.asarray(values, np.float64)), width,
               label=name)
    ax.set_xticks(x, list(labels), rotation=45, ha="right")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return fig


def trajectory_plot(t: np.ndarray, recorded: np.ndarray, segments: Sequence[tuple[np.ndarray, np.ndarray]],
                    names: Sequence[str], *, title: str, xlabel: str = "time [s]",
                    recorded_label: str = "recorded", segment_label: str = "predicted") -> Figure:
    """One panel per channel: the recorded series over `t` (T,) and predicted segments (t_seg (K,), values
    (K, C)) drawn on top, e.g. action chunks predicted from a few frames of one episode."""
    c = recorded.shape[1]
    if len(names) != c:
        raise ValueError(f"{len(names)} names for {c} channels")
    fig = new_figure(8.0, 2.0 * c + 0.6)
    axes = fig.subplots(c, 1, sharex=True, squeeze=False)[:, 0]
    for j, ax in enumerate(axes):
        ax.plot(t, recorded[:, j], color="black", lw=1.5, label=recorded_label)
        for k, (ts, values) in enumerate(segments):
            ax.plot(ts, values[:, j], color="tab:orange", lw=1.0, alpha=0.8, label=segment_label if k == 0 else None)
            ax.plot(ts[:1], values[:1, j], "o", color="tab:orange", ms=3)
        ax.set_ylabel(names[j], fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[0].legend(fontsize=8, loc="best")
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    return fig


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---- the report ----------------------------------------------------------------------------------------
class Report:
    """A Markdown report assembled in memory, plus the files it links to, written atomically by `write`."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._blocks: list[str] = [f"# {title}"]
        self._files: dict[str, bytes] = {}

    def heading(self, text: str, level: int = 2) -> None:
        self._blocks.append(f"{'#' * max(2, level)} {text}")

    def paragraph(self, text: str) -> None:
        self._blocks.append(text.strip())

    def bullets(self, items: Sequence[str]) -> None:
        self._blocks.append("\n".join(f"- {item}" for item in items))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A Markdown table; numbers are formatted with `fmt` (4 significant digits, 'n/a' for NaN)."""
        if any(len(r) != len(headers) for r in rows):
            raise ValueError("every table row needs one cell per header")
        lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
        self._blocks.append("\n".join(lines))

    def add_file(self, name: str, data: bytes) -> str:
        """Store a file to be written into the report folder (flat names only); returns its relative link."""
        if not name or "/" in name or "\\" in name or name in (".", "..") or name in _REPORT_MARKERS:
            raise ValueError(f"report file name {name!r} must be a plain file name other than {_REPORT_MARKERS}")
        self._files[name] = data
        return name

    def figure(self, fig: Figure, name: str, caption: str) -> None:
        """Render `fig` to `name` (a .png) and embed it with its caption. The figure is rendered now, so
        callers may build many without holding them all in memory."""
        if not name.endswith(".png"):
            raise ValueError(f"figure file {name!r} must end in .png")
        self.add_file(name, figure_png(fig))
        fig.clear()
        self._blocks.append(f"![{caption}]({name})\n\n*{caption}*")

    @property
    def files(self) -> list[str]:
        return sorted(self._files)

    def markdown(self) -> str:
        return "\n\n".join(self._blocks) + "\n"

    def write(self, path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
        """Write report.md, metrics.json and the files into folder `path`, replacing an older report there."""
        path = Path(path)
        check_report_target(path)
        payload = json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n"

        def write(tmp: Path) -> None:
            for name, data in self._files.items():
                (tmp / name).write_bytes(data)
            (tmp / METRICS_JSON).write_text(payload)
            (tmp / REPORT_MD).write_text(self.markdown())

        return atomic_dir(path, write)


def check_report_target(path: Path) -> None:
    """Fail early (before minutes of evaluation) if `path` cannot become a report folder."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"report path {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not any((path / m).exists() for m in _REPORT_MARKERS):
        raise ValueError(
            f"report folder {path} exists, is not empty and holds no {REPORT_MD}/{METRICS_JSON}: "
            "refusing to replace it (choose a new folder)"
        )
