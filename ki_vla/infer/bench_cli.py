"""`ki-vla bench --model {tiny,smol,pi05|PATH} --device {cpu,cuda}`: inference and training speed in one table.

Inference: the eager reference (`KIPolicy.sample_actions`) and the engine (`ki_vla.infer.engine`) on the same
random-weight model, batch and noise, stage by stage (vision, prefix, expert denoising loop) and end to end,
p50/p99 over --runs after --warmup; their ratio; and the arithmetic/memory floor from the config. The reference
prefix time is (vision + prefix) minus vision, measured separately. Training: one optimizer step (forward,
backward, AdamW) for the `ki` and `pi0` variants and their ratio (the paper: KI costs about +20%), with peak
memory (CUDA allocator peak; on the CPU the process's peak RSS, which only grows).
Ratios are what to compare across machines; absolute numbers belong to the device printed in the header.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

help = "benchmark inference (eager vs engine, per stage, vs the floor) and training steps (ki vs pi0)"

NAMED = {"tiny": "config/model/tiny.yaml", "smol": "config/model/smol.yaml", "pi05": "config/model/pi05.yaml"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="tiny | smol | pi05 | a model YAML (weights are random)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per measurement (default 100)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1, help="inference batch size")
    parser.add_argument("--train-batch-size", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps per variant (0 skips training)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")


def _timer(device: torch.device, fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
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


def build(model: str, variant: str, device: torch.device, dtype: torch.dtype):
    from ki_vla.model.config import PolicyConfig
    from ki_vla.model.policy import KIPolicy

    cfg = PolicyConfig.from_yaml(NAMED.get(model, model))
    # Timing does not depend on weight values: skip loading pretrained text weights, keep the shapes.
    cfg = dataclasses.replace(cfg, variant=variant, dtype="float32", text=dataclasses.replace(cfg.text, pretrained=None))
    torch.manual_seed(0)
    return KIPolicy(cfg).to(device=device, dtype=dtype).eval()


def bench_inference(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    from ki_vla.infer.engine import InferenceEngine

    policy = build(args.model, "ki", device, dtype)
    batch = policy.example_batch(args.batch_size)
    batch["images"] = batch["images"].to(dtype)
    cfg = policy.cfg
    noise = torch.randn(args.batch_size, cfg.horizon, cfg.max_action_dim, device=device)
    t = lambda fn: _timer(device, fn, args.runs, args.warmup)  # noqa: E731

    with torch.no_grad():
        kv, valid = policy.prefix_cache(batch)

        def expert_loop() -> torch.Tensor:
            x = noise
            for i in range(cfg.num_flow_steps):
                tt = torch.full((args.batch_size,), 1.0 - i / cfg.num_flow_steps, device=device)
                x = x + (-1.0 / cfg.num_flow_steps) * policy._expert_velocity(x, tt, kv, valid).float()
            return x

        ref_vision = t(lambda: policy.backbone.embed_images(batch["images"]))
        ref_vis_prefix = t(lambda: policy.prefix_cache(batch))
        ref = {"vision": ref_vision,
               "prefix": {k: max(0.0, ref_vis_prefix[k] - ref_vision[k]) for k in ref_vision},
               "expert": t(expert_loop),
               "total": t(lambda: policy.sample_actions(batch, noise=noise, normalized=True))}

    engine = InferenceEngine(policy, batch_size=args.batch_size, device=device, dtype=dtype)
    engine.load(batch, noise)
    eng = {name: t(lambda name=name: engine.run_stage(name)) for name in ("vision", "prefix", "expert")}
    eng["total"] = t(lambda: engine.sample_actions(batch, noise=noise, normalized=True))
    err = (engine.sample_actions(batch, noise=noise) - policy.sample_actions(batch, noise=noise)).abs().max().item()
    return {"reference": ref, "engine": eng, "engine_max_abs_diff": err, "cuda_graphs": engine.cuda_graphs}


def _train_step(args: argparse.Namespace, device: torch.device, variant: str) -> dict[str, float]:
    policy = build(args.model, variant, device, torch.float32).train()
    batch = policy.example_batch(args.train_batch_size)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = policy(batch)["loss"]
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return {**_timer(device, step, args.train_steps, 1), "peak_memory_mb": _peak_memory_mb(device)}


def bench_training(args: argparse.Namespace, device: torch.device) -> dict:
    out = {}
    for variant in ("ki", "pi0"):
        out[variant] = _train_step(args, device, variant)  # the model and optimizer are freed on return
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["ki_over_pi0"] = out["ki"]["p50"] / out["pi0"]["p50"]
    return out


def run(args: argparse.Namespace) -> int:
    from ki_vla.infer.flops import gpu_peak, inference_floor
    from ki_vla.model.config import PolicyConfig

    if args.runs < 1 or args.warmup < 0 or args.batch_size < 1:
        raise ValueError("--runs and --batch-size must be >= 1, --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    result = {"model": args.model, "device": name, "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""),
              "batch_size": args.batch_size, "runs": args.runs}
    result["inference"] = bench_inference(args, device, dtype)
    cfg = PolicyConfig.from_yaml(NAMED.get(args.model, args.model))
    floor = inference_floor(cfg, args.batch_size, bytes_per_param=2 if dtype == torch.bfloat16 else 4)
    result["floor"] = {"tflop": {k: v / 1e12 for k, v in floor.flops.items()}, "gbytes": {k: v / 1e9 for k, v in floor.bytes.items()}}
    peak = gpu_peak(name) if device.type == "cuda" else None
    if peak:
        result["floor"]["ms"] = floor.time_ms(peak[1], peak[2])
        result["floor"]["gpu"] = peak[0]
    if args.train_steps > 0:
        result["training"] = bench_training(args, device)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def format_table(r: dict) -> str:
    inf, fl = r["inference"], r["floor"]
    lines = [f"ki-vla bench: model {r['model']} on {r['device']}, torch {r['torch']}, {r['dtype']}, batch {r['batch_size']}, "
             f"{r['runs']} runs (engine CUDA graphs: {'on' if inf['cuda_graphs'] else 'off'})",
             f"{'stage':<8}{'eager p50':>11}{'eager p99':>11}{'engine p50':>12}{'engine p99':>12}{'speed-up':>10}"
             f"{'TFLOP':>9}{'GB':>8}{'floor ms':>10}"]
    for stage in ("vision", "prefix", "expert", "total"):
        e, g = inf["reference"][stage], inf["engine"][stage]
        tf = sum(fl["tflop"].values()) if stage == "total" else fl["tflop"][stage]
        gb = sum(fl["gbytes"].values()) if stage == "total" else fl["gbytes"][stage]
        floor_ms = f"{fl['ms'][stage]:.2f}" if "ms" in fl else "-"
        speed = f"{e['p50'] / g['p50']:.2f}x" if g["p50"] > 0 else "-"
        lines.append(f"{stage:<8}{e['p50']:>10.2f} {e['p99']:>10.2f} {g['p50']:>11.2f} {g['p99']:>11.2f} {speed:>9}"
                     f"{tf:>9.3f}{gb:>8.2f}{floor_ms:>10}")
    lines.append(f"engine vs eager max |diff| {inf['engine_max_abs_diff']:.2e} (real units)"
                 + (f"; floor from {fl['gpu']} peaks" if "gpu" in fl else "; floor ms: only for known GPUs"))
    if "training" in r:
        tr = r["training"]
        lines.append(f"training step (fwd+bwd+AdamW, batch per the run): ki p50 {tr['ki']['p50']:.1f} ms "
                     f"(peak {tr['ki']['peak_memory_mb']:.0f} MB), pi0 p50 {tr['pi0']['p50']:.1f} ms "
                     f"(peak {tr['pi0']['peak_memory_mb']:.0f} MB), ki/pi0 {tr['ki_over_pi0']:.2f}x")
    return "\n".join(lines)
