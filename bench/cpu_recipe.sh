#!/usr/bin/env bash
# The CPU recipe end to end for one sim task (README: "Train a policy that solves the sim tasks on a CPU"):
#
#   bash bench/cpu_recipe.sh transfer_cube            # ~1 h 30 min on 2 cores: collect, train (<= 60 min), evaluate
#   bash bench/cpu_recipe.sh transfer_color
#   OUT=runs/x EPISODES=50 STEPS=9000 EVAL=50 bash bench/cpu_recipe.sh insertion   # STEPS: default the config's
#
# 1. 50 scripted demonstrations (seeds 0.., DART noise 0.08 rad on the executed arm commands), 2. `ki-vla train --config config/train/sim_cpu.yaml`,
# 3. the learning curve over the kept checkpoints (ROS-free lockstep rollouts, seeds 1000..),
# 4. the final checkpoint through the ROS graph: lockstep, then realtime (alone on the machine: realtime numbers
#    depend on free CPU). transfer_color is evaluated once per instruction (red, blue) on the same scenes, so
#    "the other instruction moves the other cube" is measured. Outputs under $OUT/<task>/.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:?usage: bench/cpu_recipe.sh transfer_cube|transfer_color|insertion}
out=${OUT:-outputs/cpu_recipe}/$task
episodes=${EPISODES:-50}
eval_episodes=${EVAL:-50}
kivla=${KIVLA:-.venv/bin/ki-vla}
mkdir -p "$out"
noise=${ACTION_NOISE:-0.08}
[ -d "$out/data" ] || "$kivla" collect --task "$task" --episodes "$episodes" --out "$out/data" --action-noise "$noise" \
  --image-size 120x160 --vcodec h264 --max-attempts $((4 * episodes))
"$kivla" train --config config/train/sim_cpu.yaml dataset="$out/data" output_dir="$out/train" ${STEPS:+max_steps=$STEPS} resume=true
"$kivla" learning-curve --run "$out/train" --task "$task" --episodes "$eval_episodes" --out "$out/curve"
targets=("")
[ "$task" = transfer_color ] && targets=(red blue)
for target in "${targets[@]}"; do
  suffix=${target:+_$target}
  "$kivla" eval-rollout --model "$out/train/final" --task "$task" --episodes "$eval_episodes" \
    ${target:+--target "$target"} --json "$out/rollout$suffix.json"
done
for mode in lockstep realtime; do
  "$kivla" eval-sim --model "$out/train/final" --task "$task" --episodes "$eval_episodes" --mode "$mode" \
    --report "$out/eval_sim_$mode"
done
echo "-> $out"
