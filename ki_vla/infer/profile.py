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

"""Where an engine stage's time goes: measured with torch.profiler, grouped into what bounds it.

CUDA graphs hide individual kernels from a profiler, so the stages are profiled on the engine's static eager path
(the same kernels, launched one by one). The result answers "what bounds this stage" with measured numbers: the
share of kernel time in matmuls (compute- or weight-read-bound), attention, fused/elementwise kernels (memory
traffic), and how much of the wall time no kernel ran at all (launch and Python overhead, which the CUDA graph
removes). On the CPU the same report counts operator self time instead of kernel time.
"""
from __future__ import annotations

import re
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

CATEGORIES = (
    ("matmul", re.compile(r"gemm|cublas|cutlass.*(?:mm|gemm)|xmma|aten::(?:mm|addmm|bmm|matmul|linear|baddbmm)$|"
                          r"convolution|conv2d|cudnn", re.I)),
    ("attention", re.compile(r"fmha|flash|attention|attn", re.I)),
    ("fused", re.compile(r"triton|fused|CompiledFxGraph", re.I)),  # CPU: inductor kernels run inside the graph call
)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def device_sync(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work before a clock is read (nothing to wait for on the CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def profile_stage(fn: Callable[[], None], device: torch.device, runs: int = 5, top: int = 8) -> dict:
    """Profile `runs` calls of `fn` (after one untimed call); per-run milliseconds by category and the top ops."""
    cuda = device.type == "cuda"
    sync = device_sync(device)
    with torch.no_grad():
        fn()
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(runs):
                fn()
            sync()
            wall_ms = (time.perf_counter() - t0) * 1e3 / runs
    rows: dict[str, tuple[float, int]] = {}
    for evt in prof.key_averages():
        is_kernel = evt.device_type != torch.autograd.DeviceType.CPU
        if cuda != is_kernel:
            continue  # on a GPU count kernels only; on the CPU, operators (self time, so nothing twice)
        us = evt.self_device_time_total if cuda else evt.self_cpu_time_total
        if us > 0:
            prev = rows.get(evt.key, (0.0, 0))
            rows[evt.key] = (prev[0] + us / 1e3 / runs, prev[1] + evt.count // runs)
    by_cat = {label: 0.0 for label, _ in CATEGORIES} | {"other": 0.0}
    for name, (ms, _) in rows.items():
        by_cat[category(name)] += ms
    busy = sum(by_cat.values())
    ranked = sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]
    return {"wall_ms": wall_ms, "busy_ms": busy, "idle_ms": max(0.0, wall_ms - busy), "by_category_ms": by_cat,
            "top": [{"name": name[:120], "ms": ms, "calls": calls, "category": category(name)}
                    for name, (ms, calls) in ranked]}


def format_profile(stages: dict[str, dict]) -> str:
    lines = ["profile (static path without CUDA graphs; ms per run): stage, wall, busy, idle, by category, top op"]
    for name, p in stages.items():
        cats = ", ".join(f"{k} {v:.2f}" for k, v in p["by_category_ms"].items())
        top = p["top"][0] if p["top"] else {"name": "-", "ms": 0.0}
        lines.append(f"  {name:<7} wall {p['wall_ms']:.2f}  busy {p['busy_ms']:.2f}  idle {p['idle_ms']:.2f}  "
                     f"[{cats}]  top: {top['name'][:60]} {top['ms']:.2f}")
    return "\n".join(lines)
