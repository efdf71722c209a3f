#!/usr/bin/env bash
# The paper's main experiment on a bundled model: remove 25% of layers by BI, then evaluate dense vs
# pruned with lm-eval on the standard tasks (offline configs over ../shared/data).
# Usage: bash bench/paper_tasks.sh [MODEL] [OUT] [LIMIT] [MMLU_LIMIT]
set -euo pipefail
MODEL=${1:-smollm2-135m}
OUT=${2:-out/paper-$MODEL}
LIMIT=${3:-50}
MMLU_LIMIT=${4:-3}
DATA=${DEPTHPRUNE_DATA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
TASKS=hellaswag,piqa,arc_easy,arc_challenge,boolq,winogrande,lambada_openai,openbookqa

depthprune -q prune "$MODEL" --ratio 0.25 --data "$DATA/gutenberg" --samples 32 --seq-len 512 --batch-size 8 \
    --eval-ppl "$DATA/wikitext-2-raw/wiki.test.raw" --ppl-max-tokens 16384 \
    --eval-tasks "$TASKS" --eval-limit "$LIMIT" --eval-data-dir "$DATA" --out "$OUT" --overwrite
# MMLU is 57 subtasks and lm-eval's limit is per subtask: a smaller limit keeps it affordable on a CPU.
depthprune -q eval "$MODEL" --tasks mmlu --limit "$MMLU_LIMIT" --data-dir "$DATA" --role dense --results "$OUT/eval" --batch-size 8
depthprune -q eval "$OUT" --tasks mmlu --limit "$MMLU_LIMIT" --data-dir "$DATA" --role pruned --results "$OUT/eval" --batch-size 8
depthprune -q report "$OUT"
