#!/usr/bin/env bash
# The numbers of docs/paper-findings.md: ShortGPT's other findings on the bundled models.
# Usage: bash bench/paper_findings.sh [SECTION...]   sections: heads sweep mmlu (default: all)
# Small on purpose (2 shared CPU cores): calibration 8 x 128 tokens of PG-19 books (split into two
# disjoint halves of 4 for the head statistics), perplexity on the first 4,096 tokens of
# WikiText-2-raw test (512-token windows), lm-eval with a small --limit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
DATA=${DEPTHPRUNE_DATA_DIR:-$(cd .. && pwd)/shared/data}
OUT=${OUT:-bench/results/paper-findings}
CAL=(--data "$DATA/gutenberg" --samples 8 --seq-len 128 --batch-size 8)
PPL="$DATA/wikitext-2-raw/wiki.test.raw"
SECTIONS=${*:-heads sweep mmlu}
mkdir -p "$OUT"
dp() { python3 -m depthprune.cli -q "$@"; }

for s in $SECTIONS; do case $s in
heads)
  # width: head / KV-group importance, pattern statistics vs layer importance, and removing the least
  # important unit of every layer (SmolLM2: 1 of 3 KV groups; Gemma 3: 1 of 4 query heads, its only KV group shared)
  dp heads smollm2-135m "${CAL[@]}" --units group --remove-per-layer 1 --remove-unit group \
     --ppl "$PPL" --ppl-max-tokens 4096 --out "$OUT/heads-smollm2-135m" --overwrite | tee "$OUT/heads-smollm2-135m.log"
  dp heads gemma3-270m "${CAL[@]}" --units query --remove-per-layer 1 --remove-unit query \
     --ppl "$PPL" --ppl-max-tokens 4096 --out "$OUT/heads-gemma3-270m" --overwrite | tee "$OUT/heads-gemma3-270m.log"
  ;;
sweep)
  # ratio curve with accuracy, and removal (BI one-shot) vs LaCo at equal layer counts.
  # lm-eval on SmolLM2 only (Gemma 3's 262k-token vocabulary makes every scored token ~6x dearer):
  # HellaSwag limit 50 on every point; MMLU (57 subtasks, the limit is per subtask) limit 1 = 57
  # questions, BI one-shot only.
  dp sweep smollm2-135m "${CAL[@]}" --metrics bi --strategies one-shot,laco --counts 2,4,6,8 \
     --ppl "$PPL" --ppl-max-tokens 4096 --tasks hellaswag --limit 50 --task-data-dir "$DATA" \
     --out "$OUT/sweep-smollm2-135m" --overwrite | tee "$OUT/sweep-smollm2-135m.log"
  dp sweep gemma3-270m "${CAL[@]}" --metrics bi --strategies one-shot,laco --counts 2,4,6,8 \
     --ppl "$PPL" --ppl-max-tokens 4096 --out "$OUT/sweep-gemma3-270m" --overwrite | tee "$OUT/sweep-gemma3-270m.log"
  ;;
mmlu)
  dp sweep smollm2-135m "${CAL[@]}" --metrics bi --strategies one-shot --counts 2,4,6,8 \
     --ppl "$PPL" --ppl-max-tokens 4096 --tasks mmlu --limit 1 --task-data-dir "$DATA" \
     --out "$OUT/sweep-mmlu-smollm2-135m" --overwrite | tee "$OUT/sweep-mmlu-smollm2-135m.log"
  ;;
*) echo "unknown section $s" >&2; exit 2;;
esac; done
