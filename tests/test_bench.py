"""`ki-vla bench` runs on the CPU as a smoke test (numbers are checked for presence and sanity, never timed)."""
import argparse
import json

import pytest

from ki_vla.infer import bench_cli
from ki_vla.infer.flops import GPU_PEAKS, inference_floor
from ki_vla.model.config import PolicyConfig


def run_bench(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return bench_cli.run(parser.parse_args(list(argv)))


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert run_bench("--model", "tiny", "--runs", "2", "--warmup", "1", "--train-steps", "1", "--json", str(out)) == 0
    table = capsys.readouterr().out
    assert "engine p50" in table and "ki/pi0" in table
    r = json.loads(out.read_text())
    for stage in ("vision", "prefix", "expert", "total"):
        assert r["inference"]["reference"][stage]["p50"] >= 0 and r["inference"]["engine"][stage]["p99"] > 0
    assert r["inference"]["engine_max_abs_diff"] < 1e-4
    assert r["training"]["ki"]["p50"] > 0 and r["training"]["ki_over_pi0"] > 0


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError):
        run_bench("--runs", "0")
    with pytest.raises(ValueError, match="CUDA"):
        run_bench("--device", "cuda", "--runs", "1")


def test_pi05_floor_matches_method_numbers():
    """METHOD.md: ~4.2 TFLOP for an 816-token prefix and ~11 GB of weight reads at pi0.5 size, ~5 ms on an H100."""
    cfg = PolicyConfig.from_yaml("config/model/pi05.yaml")
    cfg816 = PolicyConfig.from_dict({**cfg.to_dict(), "max_text_tokens": 816 - cfg.num_image_tokens})
    floor = inference_floor(cfg816)
    assert 3.9e12 < floor.total_flops < 4.6e12
    assert 10e9 < floor.total_bytes < 12.5e9
    assert 4.0 < floor.time_ms(*GPU_PEAKS["H100"])["total"] < 8.0
