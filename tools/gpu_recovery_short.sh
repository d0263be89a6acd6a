#!/usr/bin/env bash
# A short, real recovery run on one GPU (issue #16): SmolLM2-135M from its packaged GGUF, ZipLM one-shot to 1.5x
# and 2x on the shipped ORT-CPU table (64 calibration windows of Wikipedia, pruned on CUDA), then each member
# trained STEPS steps x 16 x 512 tokens in bf16 with KD (logits + hidden) and, separately, plain LM continued
# pretraining, held-out perplexity on gensim's lee_background news text every 50 steps (train.json `evals`).
#   bash tools/gpu_recovery_short.sh OUT GGUF TEXTDIR     # TEXTDIR: wiki.txt (training), lee.txt (held out)
# Needs transformers 5.23 and gguf importable. tools/recovery_gpu.sh is the full-budget version.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT}; GGUF=${2:?GGUF}; TEXT=${3:?TEXTDIR}; STEPS=${STEPS:-300}
mkdir -p "$OUT"; W=$(mktemp -d)
DENSE=$(python3 -c "
import pathlib, ziplm_deploy.models.assets as a
a._smollm2_gguf = lambda: pathlib.Path('$GGUF')
print(a.smollm2_dir())" | tail -1)
python3 -m ziplm_deploy eval --model "$DENSE" --data "$TEXT/lee.txt" --seq-len 512 --max-windows 32 --json > "$OUT/dense-eval.json"
cat "$OUT/dense-eval.json"
python3 -m ziplm_deploy prune --model "$DENSE" --table profiles/smollm2-135m_ort-cpu_b1_s128_t1.json \
    --calib "$TEXT/wiki.txt" --windows 64 --targets 1.5 2 --device cuda --out "$W/prune" --no-progress
cp "$W/prune/family-ziplm.json" "$OUT/"
for M in 2x 1.5x; do
  for RECIPE in lm kd; do
    TEACHER=(); [ "$RECIPE" = kd ] && TEACHER=(--teacher "$DENSE")
    python3 -m ziplm_deploy distill --student "$W/prune/ziplm-$M" "${TEACHER[@]}" --data "$TEXT/wiki.txt" \
        --eval-data "$TEXT/lee.txt" --eval-windows 32 --steps "$STEPS" --batch-size 16 --seq-len 512 --lr 1e-4 \
        --mixed-precision bf16 --eval-every 50 --save-every 0 --out "$W/$M-$RECIPE" --no-progress
    cp "$W/$M-$RECIPE/train.json" "$OUT/train-$M-$RECIPE.json"
  done
done
