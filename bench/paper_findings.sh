#!/usr/bin/env bash
# The numbers of docs/paper-findings.md: ShortGPT's other findings on the bundled models.
# Usage: bash bench/paper_findings.sh [SECTION...]
#   sections: heads-smollm2 heads-gemma3 sweep-smollm2 sweep-gemma3 tasks-smollm2 mmlu-smollm2
#             depth-width-smollm2 depth-width-gemma3 laco-t-smollm2 laco-h-smollm2 laco-t-gemma3 heads-gemma3-loss
#   (default: all but mmlu-smollm2, in turn)
# Tiny on purpose: the 2 CPU cores were shared by ~7 engineers' jobs (load average ~20; one of
# these processes got ~6% of a core). Calibration 8 sequences x 32 tokens of the PG-19 books for the
# head scores (two disjoint halves of 4), 8 x 64 for the sweeps; perplexity on the first 2,048
# tokens of WikiText-2-raw test (512-token windows); HellaSwag with lm-eval --limit 20.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
DATA=${DEPTHPRUNE_DATA_DIR:-$(cd .. && pwd)/shared/data}
OUT=${OUT:-bench/results/paper-findings}
PPL=(--ppl "$DATA/wikitext-2-raw/wiki.test.raw" --ppl-max-tokens 2048)
HCAL=(--data "$DATA/gutenberg" --samples 8 --seq-len 32 --batch-size 8)
SCAL=(--data "$DATA/gutenberg" --samples 8 --seq-len 64 --batch-size 8)
SECTIONS=${*:-heads-smollm2 heads-gemma3 sweep-smollm2 sweep-gemma3 tasks-smollm2 depth-width-smollm2 depth-width-gemma3}
mkdir -p "$OUT"
dp() { python3 -m depthprune.cli -q "$@"; }

for s in $SECTIONS; do case $s in
heads-smollm2)
  # width: KV-group importance (3 groups of 3 query heads per layer), pattern statistics vs layer
  # importance, and removing the least important KV group of every layer (a reloadable checkpoint)
  dp heads smollm2-135m "${HCAL[@]}" --units group --remove-per-layer 1 --remove-unit group "${PPL[@]}" \
     --out "$OUT/heads-smollm2-135m" --overwrite | tee "$OUT/heads-smollm2-135m.log" ;;
heads-gemma3)
  # Gemma 3 270M: 4 query heads sharing 1 KV group per layer, so query heads are the unit. Only the
  # one-pass o_proj score: Gemma's 262k-token LM head makes every masked partial pass ~3x dearer.
  dp heads gemma3-270m "${HCAL[@]}" --metrics oproj-norm --units query --remove-per-layer 1 --remove-unit query \
     --select-by oproj-norm "${PPL[@]}" --out "$OUT/heads-gemma3-270m" --overwrite | tee "$OUT/heads-gemma3-270m.log" ;;
heads-gemma3-loss)
  # Gemma 3 270M with the direct score too: masked calibration-loss increase per query head (72 partial passes)
  dp heads gemma3-270m "${HCAL[@]}" --metrics loss,oproj-norm --units query \
     --out "$OUT/heads-gemma3-270m" --overwrite | tee "$OUT/heads-gemma3-270m-loss.log" ;;
sweep-smollm2)
  # removal (BI one-shot) vs LaCo at equal layer counts
  dp sweep smollm2-135m "${SCAL[@]}" --metrics bi --strategies one-shot,laco --counts 2,4,6,8 "${PPL[@]}" \
     --out "$OUT/sweep-smollm2-135m" --overwrite | tee "$OUT/sweep-smollm2-135m.log" ;;
sweep-gemma3)
  dp sweep gemma3-270m "${SCAL[@]}" --metrics bi --strategies one-shot,laco --counts 2,4,6 "${PPL[@]}" \
     --out "$OUT/sweep-gemma3-270m" --overwrite | tee "$OUT/sweep-gemma3-270m.log" ;;
laco-t-smollm2)
  # LaCo's merge and top-down search without the similarity check (T=-1 accepts every merge): LaCo at every count
  dp sweep smollm2-135m "${SCAL[@]}" --metrics bi --strategies laco --laco C=3,L=1,I=1,T=-1 --counts 2,4,6,8 "${PPL[@]}" \
     --out "$OUT/sweep-laco-t-smollm2-135m" --overwrite | tee "$OUT/sweep-laco-t-smollm2-135m.log" ;;
laco-h-smollm2)
  # LaCo kept away from the last layers (H = 25: no merge based above layer 25), threshold check on (T=0.5)
  dp sweep smollm2-135m "${SCAL[@]}" --metrics bi --strategies laco --laco C=3,L=1,H=25,I=1,T=0.5 --counts 2,4,6,8 "${PPL[@]}" \
     --out "$OUT/sweep-laco-h-smollm2-135m" --overwrite | tee "$OUT/sweep-laco-h-smollm2-135m.log"
  # the same range without the similarity check
  dp sweep smollm2-135m "${SCAL[@]}" --metrics bi --strategies laco --laco C=3,L=1,H=25,I=1,T=-1 --counts 2,4,6,8 "${PPL[@]}" \
     --out "$OUT/sweep-laco-ht-smollm2-135m" --overwrite | tee "$OUT/sweep-laco-ht-smollm2-135m.log" ;;
laco-t-gemma3)
  dp sweep gemma3-270m "${SCAL[@]}" --metrics bi --strategies laco --laco C=3,L=1,I=1,T=-1 --counts 2,4,6 "${PPL[@]}" \
     --out "$OUT/sweep-laco-t-gemma3-270m" --overwrite | tee "$OUT/sweep-laco-t-gemma3-270m.log" ;;
tasks-smollm2)
  # the ratio curve with accuracy: HellaSwag and PIQA (first 100 documents each) at every point of BI one-shot
  dp sweep smollm2-135m "${SCAL[@]}" --metrics bi --strategies one-shot --counts 2,4,6,8,10,12 "${PPL[@]}" \
     --tasks hellaswag,piqa --limit 100 --task-data-dir "$DATA" \
     --out "$OUT/tasks-smollm2-135m" --overwrite | tee "$OUT/tasks-smollm2-135m.log" ;;
mmlu-smollm2)
  # MMLU: 57 subtasks and the limit is per subtask; limit 1 = 57 questions per point
  dp sweep smollm2-135m "${SCAL[@]}" --metrics bi --strategies one-shot --counts 4,8 "${PPL[@]}" \
     --tasks mmlu --limit 1 --task-data-dir "$DATA" \
     --out "$OUT/sweep-mmlu-smollm2-135m" --overwrite | tee "$OUT/sweep-mmlu-smollm2-135m.log" ;;
depth-width-smollm2)
  # depth vs width: PPL against the share of parameters removed, layers (BI) vs KV groups (masked loss), one scoring
  python3 bench/depth_vs_width.py smollm2-135m --unit group --select-by loss --layer-counts 1,2,3,4,6,8 \
     --json "$OUT/depth-vs-width-smollm2-135m.json" | tee "$OUT/depth-vs-width-smollm2-135m.log" ;;
depth-width-gemma3)
  # Gemma-3: 4 query heads share 1 KV group, so query heads (o_proj score, as heads-gemma3) are the unit
  python3 bench/depth_vs_width.py gemma3-270m --unit query --select-by oproj-norm --layer-counts 1,2,3,4 \
     --json "$OUT/depth-vs-width-gemma3-270m.json" | tee "$OUT/depth-vs-width-gemma3-270m.log" ;;
*) echo "unknown section $s" >&2; exit 2;;
esac; done
