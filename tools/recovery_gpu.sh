#!/usr/bin/env bash
# Recovery with a real budget, unattended on one NVIDIA GPU (issue #16): SmolLM2-135M pruned by ZipLM
# (and LayerChop, for the after-recovery comparison) to 1.5x and 2x, then each member trained with
# KD (logits + hidden states) and, separately, with plain LM continued pretraining, held-out
# perplexity every 100 steps (train.json `evals`), every member exported and verified in ONNX Runtime
# CPU against the dense model with held-out perplexity. Resumable: re-run the same command.
#
#   bash tools/recovery_gpu.sh [OUT]          # default runs/recovery_gpu
#
# Measured on an H200 (tools/results/gpu/): KD ~65k tokens/s, plain LM ~82k tokens/s at 16 x 512 bf16, so each
# member x recipe below takes ~4-5 minutes of training (8 of them: ~35 min) plus CPU-side verification. The
# GPU image has no gensim: there, use tools/gpu_recovery_short.sh's TEXTDIR form (wiki.txt, lee.txt).
#
# Budget per member: STEPS (2000) x BATCH (16) x SEQ (512) = 16M tokens, bf16, lr 1e-4, cosine.
# The only offline text is gensim's Wikipedia dump (~650k tokens): this budget repeats it ~25x, so
# watch the held-out curve for overfitting; pass DATA=/path/to/more.txt to train on more.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recovery_gpu}
STEPS=${STEPS:-2000}
BATCH=${BATCH:-16}
SEQ=${SEQ:-512}
LR=${LR:-1e-4}
DATA=${DATA:-wikipedia}
HELDOUT=$(python3 -c "from gensim.test.utils import datapath; print(datapath('lee_background.cor'))")
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'recovery_gpu: no CUDA device (torch.cuda.is_available() is False)')"
DENSE=$(python3 -c "from ziplm_deploy.models.assets import smollm2_dir; print(smollm2_dir())")
TABLE=profiles/smollm2-135m_ort-cpu_b1_s128_t1.json
mkdir -p "$OUT"

for METHOD in ziplm layerchop; do
  ziplm-deploy prune --model "$DENSE" --table "$TABLE" --calib wikipedia --windows 256 --targets 1.5 2 \
      --method "$METHOD" --device cuda --out "$OUT/prune"
done
for MEMBER in ziplm-1.5x ziplm-2x layerchop-1.5x layerchop-2x; do
  for RECIPE in kd lm; do
    TEACHER=(); [ "$RECIPE" = kd ] && TEACHER=(--teacher "$DENSE")
    ziplm-deploy distill --student "$OUT/prune/$MEMBER" "${TEACHER[@]}" --data "$DATA" --eval-data "$HELDOUT" \
        --steps "$STEPS" --batch-size "$BATCH" --seq-len "$SEQ" --lr "$LR" --mixed-precision bf16 \
        --eval-every 100 --save-every 200 --out "$OUT/$MEMBER-$RECIPE" --resume
    ziplm-deploy verify --baseline "$DENSE" --candidate "$OUT/$MEMBER-$RECIPE/model" --runtime ort-cpu \
        --table "$TABLE" --eval-data "$HELDOUT" --eval-windows 32 --rounds 20 \
        --report "$OUT/verify/$MEMBER-$RECIPE.verify.json" || true   # a failed budget is data here, not a stop
  done
done
ziplm-deploy report "$OUT" --out "$OUT/report.html" --markdown "$OUT/report.md"
echo "recovery_gpu: done; $OUT/report.md, curves in $OUT/*/train.json"
