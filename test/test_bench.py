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

"""`ki-vla bench` runs on the CPU as a smoke test (numbers are checked for presence and sanity, never timed)."""
import argparse
import json

import pytest

from ki_vla.infer import cli as bench_cli
from ki_vla.infer.flops import GPU_PEAKS, inference_floor
from ki_vla.model.config import PolicyConfig


def run_bench(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return bench_cli.run(parser.parse_args(list(argv)))


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert run_bench("--model", "tiny", "--runs", "2", "--warmup", "1", "--train-steps", "1", "--profile",
                     "--json", str(out)) == 0
    table = capsys.readouterr().out
    assert "engine p50" in table and "ki/pi0" in table and "capture check" in table and "profile" in table
    r = json.loads(out.read_text())
    assert r["capture_check"] == {"vision": None, "prefix": None, "expert": None}
    assert list(r["inference"]["engines"]) == ["engine"]  # fusion is measured on CUDA or with --fuse on
    eng = r["inference"]["engines"]["engine"]
    for stage in ("vision", "prefix", "expert", "total"):
        assert r["inference"]["reference"][stage]["p50"] >= 0 and eng[stage]["p99"] > 0
    assert eng["max_abs_diff"] < 1e-4 and not eng["cuda_graphs"] and not eng["fused"]
    prof = eng["profile"]["expert"]
    assert (prof["busy_ms"] > 0 and prof["top"]
            and sum(prof["by_category_ms"].values()) == pytest.approx(prof["busy_ms"]))
    assert prof["by_category_ms"]["matmul"] > 0 and prof["by_category_ms"]["attention"] > 0
    tr = r["training"]
    assert tr["ki"]["p50"] > 0 and tr["ki_over_pi0"] > 0 and tr["ki_over_pi0_flops"] > 1
    assert tr["ki"]["tokens"]["target"] >= 40 and tr["pi0"]["tokens"]["target"] <= 8  # FAST targets only in ki


def test_bench_reports_a_failing_engine_and_goes_on(tmp_path, monkeypatch, capsys):
    """A first run on a new GPU must still deliver every other number when one engine configuration fails."""
    from ki_vla.infer.engine import InferenceEngine

    def broken(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(InferenceEngine, "sample_actions", broken)
    out = tmp_path / "bench.json"
    assert run_bench("--runs", "1", "--warmup", "0", "--train-steps", "0", "--prefix-tokens", "100",
                     "--json", str(out)) == 0
    assert "FAILED RuntimeError: operation not permitted" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert "error" in r["inference"]["engines"]["engine"] and r["inference"]["reference"]["total"]["p50"] > 0
    assert r["prefix_tokens"] == 100 and "training" not in r


def test_profile_categories():
    from ki_vla.infer.profile import category

    assert category("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert category("aten::addmm") == "matmul"
    assert category("fmha_cutlassF_bf16_aligned_64x64_rf_sm80") == "attention"
    assert category("triton_per_fused_add_mean_mul_pow_rsqrt_0") == "fused"
    assert category("void at::native::vectorized_elementwise_kernel<4, ...>") == "other"


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError):
        run_bench("--runs", "0")
    with pytest.raises(ValueError, match="CUDA"):
        run_bench("--device", "cuda", "--runs", "1")
    with pytest.raises(ValueError, match="prompt tokens"):
        run_bench("--prefix-tokens", "10", "--runs", "1")


def test_pi05_floor_matches_method_numbers():
    """METHOD.md: ~4.2 TFLOP for an 816-token prefix and ~11 GB of weight reads at pi0.5 size, ~5 ms on an H100."""
    cfg = PolicyConfig.from_yaml("config/model/pi05.yaml")
    cfg816 = PolicyConfig.from_dict({**cfg.to_dict(), "max_text_tokens": 816 - cfg.num_image_tokens})
    floor = inference_floor(cfg816)
    assert 3.9e12 < floor.total_flops < 4.6e12
    assert 10e9 < floor.total_bytes < 12.5e9
    assert 4.0 < floor.time_ms(*GPU_PEAKS["H100"])["total"] < 8.0


def test_bench_falls_back_to_the_byte_tokenizer(tmp_path, capsys):
    """A bare GPU box may lack a model's tokenizer package; timing does not depend on token ids."""
    import yaml

    cfg = yaml.safe_load(open("config/model/tiny.yaml"))
    cfg["text"]["tokenizer"] = str(tmp_path / "no-such-tokenizer")
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench.json"
    assert run_bench("--model", str(path), "--runs", "1", "--warmup", "0", "--train-steps", "0", "--json",
                     str(out)) == 0
    assert "using the byte tokenizer" in capsys.readouterr().out
    assert json.loads(out.read_text())["tokenizer"] == "bytes-benchmark"


def test_training_flops_explain_the_ki_overhead():
    """The extra work of KI is the FAST targets in the backbone and the LM head. At pi0.5 size with a real prompt
    (~48 tokens) and ~72 FAST targets that is under 10% more arithmetic than pi0; padded to the config's full budgets
    (200 + 180) it would be ~20%, which is why training trims batch-wide padding."""
    from ki_vla.infer.flops import training_flops

    cfg = PolicyConfig.from_yaml("config/model/pi05.yaml")
    ratio = lambda text, tgt: (sum(training_flops(cfg, "ki", 1, text, tgt).values())  # noqa: E731
                               / sum(training_flops(cfg, "pi0", 1, text, tgt).values()))
    assert 1.05 < ratio(48, 72) < 1.12
    assert 1.15 < ratio(200, 180) < 1.25
    frozen, joint = training_flops(cfg, "frozen", 1, 48, 0), training_flops(cfg, "joint", 1, 48, 0)
    assert frozen["backbone"] == pytest.approx(joint["backbone"] / 3)  # forward only
    assert training_flops(cfg, "pi0_fast", 2, 48, 72)["expert"] == 0


def test_gpu_bench_script_runs_on_the_cpu(tmp_path):
    """bench/gpu_bench.sh is what a GPU session runs in one device call; here its plumbing is checked on the CPU."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DEVICE": "cpu", "MODELS": "tiny", "RUNS": "2", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "bench/gpu_bench.sh"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torch" in (tmp_path / "environment.txt").read_text()
    r = json.loads((tmp_path / "bench_tiny.json").read_text())
    assert r["inference"]["engines"]["engine"]["profile"]["expert"]["busy_ms"] > 0
    assert "ki/pi0" in (tmp_path / "bench_tiny.txt").read_text()


def test_bench_runs_the_gpu_numeric_path_on_the_cpu(tmp_path):
    """bf16 weights + torch.compile fusion: what `--device cuda` runs, minus the CUDA graphs, so a dtype or
    compile problem shows up here before it costs GPU time."""
    out = tmp_path / "bench.json"
    assert run_bench("--runs", "1", "--warmup", "0", "--train-steps", "0", "--dtype", "bfloat16", "--fuse", "on",
                     "--json", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["dtype"] == "bfloat16"
    for label in ("engine", "fused"):
        e = r["inference"]["engines"][label]
        assert "error" not in e, e
        assert e["max_abs_diff"] < 0.05  # bf16 against the bf16 reference, real units of ~1
    assert r["inference"]["engines"]["fused"]["fused"]
