#!/usr/bin/env bash
# How long the GPU stages take at recovery-sized settings (issue #16's recovery budget), on random weights in a
# given model shape (ZIPLM_GPU_SHAPE_DIR: config.json + tokenizer + calib.txt; the GPU image cannot carry
# 514 MB of SmolLM2 weights): prune on CUDA with 256 calibration windows, then KD and plain-LM steps at
# batch 16 x 512 in bf16. Figures (seconds, tokens/s) land in OUT/*.json; quality is meaningless here.
#   ZIPLM_GPU_SHAPE_DIR=DIR bash tools/gpu_sizing.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_sizing.sh OUT}
mkdir -p "$OUT" && W=$(mktemp -d)
python3 -c "import sys; sys.path.insert(0, 'tools'); import gpu_check, pathlib; gpu_check.make_model(pathlib.Path('$W'))"
CALIB=$ZIPLM_GPU_SHAPE_DIR/calib.txt
s=$(date +%s.%N)
python3 -m ziplm_deploy prune --model "$W/dense" --table profiles/smollm2-135m_ort-cpu_b1_s128_t1.json --calib "$CALIB" \
    --windows 256 --targets 1.5 2 --device cuda --out "$W/prune" --no-progress --no-eval
echo "{\"prune_cuda_256_windows_s\": $(python3 -c "print(round($(date +%s.%N) - $s, 1))")}" > "$OUT/prune.json"
for RECIPE in kd lm; do
  TEACHER=(); [ "$RECIPE" = kd ] && TEACHER=(--teacher "$W/dense")
  python3 -m ziplm_deploy distill --student "$W/prune/ziplm-2x" "${TEACHER[@]}" --data "$CALIB" --steps 40 \
      --batch-size 16 --seq-len 512 --mixed-precision bf16 --save-every 0 --out "$W/$RECIPE" --no-progress
  cp "$W/$RECIPE/train.json" "$OUT/train-$RECIPE.json"
done
cat "$OUT/prune.json"
