#!/usr/bin/env bash
# One-GPU scale check (<= 5 minutes on one H100/H200-class GPU): writes one JSON.
#   bash bench/gpu_check.sh [OUT.json]            # CUDA: Llama-2-7B shape, bf16, 128 x 2048 tokens
#   SHAPE=small bash bench/gpu_check.sh out.json  # CPU smoke run (SHAPE=tiny is what CI runs)
# Env: SHAPE (7b|small|tiny), ACT_BUDGET_MB (streamed activation budget, default 4096),
#      GPU_CHECK_TMP (where the temporary safetensors copy goes; needs ~14 GB for 7b).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench/results/gpu_check.json}"
mkdir -p "$(dirname "$OUT")"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 300 python3 bench/gpu_check.py --out "$OUT"
