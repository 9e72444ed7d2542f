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

"""`ki-vla bench --model {tiny,smol,pi05|PATH} --device {cpu,cuda}`: inference and training speed in one table.

Inference: the eager reference (`KIPolicy.sample_actions`) and the engine (`ki_vla.infer.engine`; with
torch.compile fusion too on CUDA or with --fuse on) on the same random-weight model, batch and noise, stage by
stage (vision, prefix, expert denoising loop) and end to end, p50/p99 over --runs after --warmup; the speed-up;
the arithmetic/memory floor from the config; the CUDA-graph capture check; with --profile, where each stage's
time goes. The reference prefix time is (vision + prefix) minus vision, measured separately. Training: one
optimizer step (forward, backward, AdamW) for the `ki` and `pi0` variants and their ratio (the paper: KI costs
about +20%), measured and by FLOPs, with peak memory (CUDA allocator peak; on the CPU the process's peak RSS,
which only grows).
Ratios are what to compare across machines; absolute numbers belong to the device printed in the header.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import sys
import time
from typing import Callable

import numpy as np
import torch

from ki_vla.atomic import write_json_atomic
from ki_vla.device import resolve_device

help = "benchmark inference (eager vs engine, per stage, vs the floor) and training steps (ki vs pi0)"

NAMED = {"tiny": "config/model/tiny.yaml", "smol": "config/model/smol.yaml", "pi05": "config/model/pi05.yaml"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="tiny | smol | pi05 | a model YAML (weights are random)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per measurement (default 100)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1, help="inference batch size")
    parser.add_argument("--train-batch-size", type=int, default=2)
    parser.add_argument("--train-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="training weights/optimizer dtype (float32 runs under bf16 autocast on CUDA; "
                             "bfloat16 = config/train/pi05.yaml's memory setting)")
    parser.add_argument("--train-steps", type=int, default=5,
                        help="timed training steps per variant (0 skips training)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="inference weights dtype (auto: bfloat16 on CUDA, float32 on the CPU; bfloat16 on the "
                             "CPU runs the GPU's numeric path)")
    parser.add_argument("--fuse", default="auto", choices=("auto", "on", "off"),
                        help="also measure the engine with torch.compile fusion (auto: on CUDA only; compiling "
                             "takes seconds to a minute)")
    parser.add_argument("--prefix-tokens", type=int, default=None,
                        help="prefix length (image + prompt tokens) to size the prompt budget for; default: the "
                             "config's (pi05: 968; the paper's setting is 816)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile each engine stage (what bounds it: matmul, attention, elementwise, idle)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")


def _timer(device: torch.device, fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    from ki_vla.infer.profile import device_sync

    sync = device_sync(device)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def model_config(args: argparse.Namespace):
    from ki_vla.model.config import PolicyConfig
    from ki_vla.model.pretrained import load_text_tokenizer

    cfg = PolicyConfig.from_yaml(NAMED.get(args.model, args.model))
    if args.prefix_tokens is not None:
        text = args.prefix_tokens - cfg.num_image_tokens
        if text < 8:
            raise ValueError(f"--prefix-tokens {args.prefix_tokens} leaves {text} prompt tokens after "
                             f"{cfg.num_image_tokens} image tokens (need >= 8)")
        cfg = dataclasses.replace(cfg, max_text_tokens=text)
    # Timing does not depend on weight values: skip loading pretrained text weights, keep the shapes. Nor on token
    # ids: where the model's tokenizer is not installed (a bare GPU box), the byte tokenizer stands in.
    text = dataclasses.replace(cfg.text, pretrained=None)
    try:
        load_text_tokenizer(text.tokenizer)
    except (FileNotFoundError, ImportError) as exc:
        print(f"ki-vla bench: tokenizer {text.tokenizer!r} unavailable ({exc}); using the byte tokenizer "
              "(bytes-benchmark)")
        text = dataclasses.replace(text, tokenizer="bytes-benchmark")
    return dataclasses.replace(cfg, dtype="float32", text=text)


def build(cfg, variant: str, device: torch.device, dtype: torch.dtype):
    from ki_vla.model.expert import open_time_gates
    from ki_vla.model.policy import KIPolicy

    torch.manual_seed(0)
    with torch.device(device):  # initialized where it runs: a pi0.5-size random init takes minutes on the CPU
        policy = KIPolicy(dataclasses.replace(cfg, variant=variant))
    # Random weights, random everywhere: with the adaRMS gates at their zero init the engine-vs-eager check would
    # compare little more than the expert's in/out projections.
    open_time_gates(policy, weight_std=0.02, bias_mean=0.0, bias_std=0.1)
    return policy.to(device=device, dtype=dtype).eval()


def _phase(text: str) -> None:
    """What the bench is doing now, on stderr (a pi0.5-size run takes minutes; the table goes to stdout)."""
    print(f"ki-vla bench: {text}...", file=sys.stderr, flush=True)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_engine(args: argparse.Namespace, policy, batch: dict, noise: torch.Tensor, fuse: bool,
                 device: torch.device, dtype: torch.dtype) -> dict:
    """One engine configuration: build (+ compile + capture) time, per-stage and total latency, agreement with
    the reference. Any failure is reported in the result, not raised: a first run on a new GPU should still
    deliver every other number."""
    from ki_vla.infer.engine import STAGES, InferenceEngine
    from ki_vla.infer.profile import profile_stage

    t = lambda fn: _timer(device, fn, args.runs, args.warmup)  # noqa: E731
    _phase(f"{'fused ' if fuse else ''}engine: build{' + compile' if fuse else ''}"
           f"{' + CUDA-graph capture' if device.type == 'cuda' else ''}, then {args.runs} timed runs per stage")
    try:
        t0 = time.perf_counter()
        engine = InferenceEngine(policy, batch_size=args.batch_size, device=device, dtype=dtype, fuse=fuse)
        engine.sample_actions(batch, noise=noise, normalized=True)  # fused: compiles here (CUDA: during capture)
        out: dict = {"build_s": time.perf_counter() - t0, "cuda_graphs": engine.cuda_graphs, "fused": engine.fused}
        engine.load(batch, noise)
        out.update({name: t(lambda name=name: engine.run_stage(name)) for name in STAGES})
        out["total"] = t(lambda: engine.sample_actions(batch, noise=noise, normalized=True))
        ref = policy.sample_actions(batch, noise=noise)
        out["max_abs_diff"] = (engine.sample_actions(batch, noise=noise) - ref).abs().max().item()
        if args.profile:
            engine.load(batch, noise)
            out["profile"] = {name: profile_stage(fn, device) for name, fn in engine._stage_fns().items()}
    except Exception as exc:  # noqa: BLE001 - reported in the table and the JSON
        out = {"error": f"{type(exc).__name__}: {exc}", "fused": fuse}
    return out  # the engine is freed here; the caller empties the CUDA cache


def bench_inference(args: argparse.Namespace, cfg, device: torch.device, dtype: torch.dtype) -> dict:
    _phase(f"building the {args.model} reference policy on {device}")
    policy = build(cfg, "ki", device, dtype)
    batch = policy.example_batch(args.batch_size)
    batch["images"] = batch["images"].to(dtype)
    noise = torch.randn(args.batch_size, cfg.horizon, cfg.max_action_dim, device=device)
    t = lambda fn: _timer(device, fn, args.runs, args.warmup)  # noqa: E731

    _phase(f"eager reference: {args.runs} timed runs per stage")
    with torch.no_grad():
        kv, valid = policy.prefix_cache(batch)

        def expert_loop() -> torch.Tensor:
            x = noise
            for i in range(cfg.num_flow_steps):
                tt = torch.full((args.batch_size,), 1.0 - i / cfg.num_flow_steps, device=device)
                x = x + (-1.0 / cfg.num_flow_steps) * policy._expert_velocity(x, tt, kv, valid, batch["state"]).float()
            return x

        ref_vision = t(lambda: policy.backbone.embed_images(batch["images"]))
        ref_vis_prefix = t(lambda: policy.prefix_cache(batch))
        ref = {"vision": ref_vision,
               "prefix": {k: max(0.0, ref_vis_prefix[k] - ref_vision[k]) for k in ref_vision},
               "expert": t(expert_loop),
               "total": t(lambda: policy.sample_actions(batch, noise=noise, normalized=True))}

    from ki_vla.infer.engine import fuse_by_default

    fuse_too = args.fuse == "on" or (args.fuse == "auto" and fuse_by_default(device))
    engines = {}
    for label, fuse in (("engine", False), ("fused", True)) if fuse_too else (("engine", False),):
        engines[label] = bench_engine(args, policy, batch, noise, fuse, device, dtype)
        _release(device)
    return {"reference": ref, "engines": engines}


def _train_step(args: argparse.Namespace, cfg, device: torch.device, variant: str) -> dict:
    from ki_vla.infer.flops import training_flops
    from ki_vla.model.processing import trim_padding

    dtype = getattr(torch, args.train_dtype)
    policy = build(cfg, variant, device, dtype).train()
    if variant != "pi0":
        policy.set_fast_tokenizer(_fast_tokenizer(cfg))
    batch = policy.example_batch(args.train_batch_size)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=device.type == "cuda" and dtype == torch.float32)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = policy(batch)["loss"]
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trimmed = trim_padding(batch)  # what compute_loss really runs
    tokens = {"text": trimmed["text_ids"].shape[1], "target": trimmed["target_ids"].shape[1]}
    flops = training_flops(cfg, variant, args.train_batch_size, tokens["text"], tokens["target"])
    return {**_timer(device, step, args.train_steps, 1), "peak_memory_mb": _peak_memory_mb(device),
            "tokens": tokens, "tflop": sum(flops.values()) / 1e12}


def _fast_tokenizer(cfg):
    """A FAST tokenizer fitted on chunks like example_batch's (`smooth_chunk`), so the KI step carries a realistic
    number of FAST target tokens (75-110 for 50 x 14 chunks): the extra cost of KI is in that count."""
    from ki_vla.model.policy import smooth_chunk
    from ki_vla.tokenizer.fast import FastTokenizer

    rng = np.random.default_rng(0)
    chunks = np.stack([smooth_chunk(rng, cfg.horizon, cfg.action_dim) for _ in range(2000)])
    return FastTokenizer.fit(chunks, vocab_size=cfg.fast_vocab_size)


def bench_training(args: argparse.Namespace, cfg, device: torch.device) -> dict:
    """`ki` and `pi0` steps; a failure (out of memory at pi0.5 size, say) is reported, not raised."""
    out: dict = {"dtype": args.train_dtype, "batch_size": args.train_batch_size}
    for variant in ("ki", "pi0"):
        _phase(f"training step, {variant}: build + {args.train_steps} timed steps")
        try:
            out[variant] = _train_step(args, cfg, device, variant)  # the model and optimizer are freed on return
        except Exception as exc:  # noqa: BLE001
            out[variant] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        _release(device)
    if "error" not in out["ki"] and "error" not in out["pi0"]:
        out["ki_over_pi0"] = out["ki"]["p50"] / out["pi0"]["p50"]
        out["ki_over_pi0_flops"] = out["ki"]["tflop"] / out["pi0"]["tflop"]
    return out


def _capture_check(cfg, batch_size: int) -> dict:
    from ki_vla.infer.capture_check import capture_problems

    _phase("CUDA-graph capture check (meta device)")
    return capture_problems(cfg, batch_size)


def run(args: argparse.Namespace) -> int:
    from ki_vla.infer.flops import gpu_peak, inference_floor

    if args.runs < 1 or args.warmup < 0 or args.batch_size < 1:
        raise ValueError("--runs and --batch-size must be >= 1, --warmup >= 0")
    device = resolve_device(args.device)
    cfg = model_config(args)
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    result = {"model": args.model, "device": name, "torch": torch.__version__,
              "dtype": str(dtype).replace("torch.", ""), "batch_size": args.batch_size, "runs": args.runs,
              "prefix_tokens": cfg.num_image_tokens + cfg.max_text_tokens, "flow_steps": cfg.num_flow_steps,
              "tokenizer": cfg.text.tokenizer,
              "capture_check": _capture_check(cfg, args.batch_size)}
    result["inference"] = bench_inference(args, cfg, device, dtype)
    _release(device)  # the reference policy is gone too
    floor = inference_floor(cfg, args.batch_size, bytes_per_param=2 if dtype == torch.bfloat16 else 4)
    result["floor"] = {"tflop": {k: v / 1e12 for k, v in floor.flops.items()},
                       "gbytes": {k: v / 1e9 for k, v in floor.bytes.items()}}
    peak = gpu_peak(name) if device.type == "cuda" else None
    if peak:
        result["floor"]["ms"] = floor.time_ms(peak[1], peak[2])
        result["floor"]["gpu"] = peak[0]
    # Printed and saved part by part: a run cut short by a time limit keeps what it measured.
    print(format_inference(result), flush=True)
    if args.json:
        write_json_atomic(result, args.json)
    if args.train_steps > 0:
        result["training"] = bench_training(args, cfg, device)
        print(format_training(result["training"]), flush=True)
        if args.json:
            write_json_atomic(result, args.json)
    return 0


def format_inference(r: dict) -> str:
    from ki_vla.infer.profile import format_profile

    inf, fl = r["inference"], r["floor"]
    ok = {k: e for k, e in inf["engines"].items() if "error" not in e}
    lines = [f"ki-vla bench: model {r['model']} on {r['device']}, torch {r['torch']}, {r['dtype']}, "
             f"batch {r['batch_size']}, prefix {r['prefix_tokens']} tokens, {r['flow_steps']} flow steps, "
             f"{r['runs']} runs",
             "capture check (meta device): " + ", ".join(f"{k} {'ok' if v is None else 'BLOCKED: ' + v}"
                                                         for k, v in r["capture_check"].items())]
    for label, e in inf["engines"].items():
        lines.append(f"{label}: " + (f"FAILED {e['error']}" if "error" in e else
                                     f"CUDA graphs {'on' if e['cuda_graphs'] else 'off'}, "
                                     f"fused {'on' if e['fused'] else 'off'}, "
                                     f"built in {e['build_s']:.1f} s, max |diff| vs eager "
                                     f"{e['max_abs_diff']:.2e} (real units)"))
    head = f"{'stage':<8}{'eager p50':>11}{'p99':>8}"
    for label in ok:
        head += f"{label + ' p50':>13}{'p99':>8}"
    head += f"{'speed-up':>10}{'TFLOP':>9}{'GB':>8}{'floor ms':>10}{'x floor':>9}"
    lines.append(head)
    for stage in ("vision", "prefix", "expert", "total"):
        e = inf["reference"][stage]
        row = f"{stage:<8}{e['p50']:>10.2f} {e['p99']:>7.2f}"
        for g in ok.values():
            row += f"{g[stage]['p50']:>12.2f} {g[stage]['p99']:>7.2f}"
        best = min((g[stage]["p50"] for g in ok.values()), default=None)
        tf = sum(fl["tflop"].values()) if stage == "total" else fl["tflop"][stage]
        gb = sum(fl["gbytes"].values()) if stage == "total" else fl["gbytes"][stage]
        speed = f"{e['p50'] / best:.2f}x" if best else "-"
        floor_ms = f"{fl['ms'][stage]:.2f}" if "ms" in fl else "-"
        of_floor = f"{best / fl['ms'][stage]:.1f}" if best and "ms" in fl and fl["ms"][stage] > 0 else "-"
        lines.append(f"{row} {speed:>9}{tf:>9.3f}{gb:>8.2f}{floor_ms:>10}{of_floor:>9}")
    lines.append("speed-up: eager p50 / best engine p50" + (f"; floor from {fl['gpu']} peaks" if "gpu" in fl
                                                            else "; floor ms: only for known GPUs"))
    for label, e in ok.items():
        if "profile" in e:
            lines.append(f"[{label}] " + format_profile(e["profile"]))
    return "\n".join(lines)


def format_training(tr: dict) -> str:
    lines = [f"training step (fwd+bwd+AdamW, {tr['dtype']}, batch {tr['batch_size']}):"]
    for v in ("ki", "pi0"):
        t = tr[v]
        lines.append(f"  {v:<4}" + (f"FAILED {t['error']}" if "error" in t else
                                    f"p50 {t['p50']:.1f} ms  p99 {t['p99']:.1f} ms  peak {t['peak_memory_mb']:.0f} MB  "
                                    f"{t['tflop']:.3f} TFLOP ({t['tokens']['text']} prompt + {t['tokens']['target']} "
                                    f"target tokens after trimming)"))
    if "ki_over_pi0" in tr:
        lines.append(f"  ki/pi0 {tr['ki_over_pi0']:.2f}x measured, {tr['ki_over_pi0_flops']:.2f}x by FLOPs "
                     "(target <= 1.25x)")
    return "\n".join(lines)
