#!/usr/bin/env bash
# The inference-engine and training-step measurements for a GPU, in one command (one device call).
#
#   bash bench/gpu_bench.sh                      # tiny + pi05 on cuda, JSON and tables under $OUT or outputs/bench
#   MODELS="smol" RUNS=200 bash bench/gpu_bench.sh
#   DEVICE=cpu MODELS=tiny RUNS=2 bash bench/gpu_bench.sh   # what CI runs: the script itself works
#
# Runs from a source checkout with the machine's own python3 (torch + transformers; no venv needed): the repo is
# put on PYTHONPATH. pi05 uses the paper's 816-token prefix and bf16 training weights (config/train/pi05.yaml's
# memory setting). Each model gets its own time limit (tiny 90 s, smol 240 s, pi05 480 s; PER_MODEL_TIMEOUT
# overrides all) so one hang still leaves the other results, and the default pair fits a 10-minute call.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/bench}
device=${DEVICE:-cuda}
models=${MODELS:-tiny pi05}
runs=${RUNS:-100}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$python" - > "$out/environment.txt" 2>&1 <<'PY'
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__)
print("cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
cat "$out/environment.txt"

status=0
for model in $models; do
    extra=()
    case "$model" in
        tiny) limit=90 ;;
        pi05) limit=480; extra=(--prefix-tokens 816 --train-dtype bfloat16) ;;
        *) limit=240 ;;
    esac
    limit=${PER_MODEL_TIMEOUT:-$limit}
    echo "== $model"
    timeout "$limit" "$python" -m ki_vla.cli bench --model "$model" --device "$device" --runs "$runs" --profile \
        "${extra[@]}" --json "$out/bench_$model.json" 2>&1 | grep -v '^USDT' | tee "$out/bench_$model.txt"
    rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ]; then echo "bench $model: exit $rc (124 = over ${limit}s)"; status=1; fi
done
exit $status
