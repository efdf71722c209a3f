#!/bin/sh
# The exact commands behind the numbers in docs/strategies.md (run from the repository root).
# The 2-core machine was shared with other jobs, so each benchmark runs single-threaded with very small
# settings, the two models side by side; greedy_cache runs after the SmolLM2 sweep.
export PYTHONPATH=src
( python bench/strategies_bench.py smollm2-135m --out bench/results/smollm2-135m --threads 1 \
    --samples 2 --seq-len 128 --ppl-seq-len 256 --ppl-max-tokens 512 > bench/results/smollm2-135m.log 2>&1
  python bench/greedy_cache.py smollm2-135m --steps 2 --samples 1 --seq-len 128 --threads 1 \
    --json bench/results/greedy_cache_smollm2-135m.json > bench/results/greedy_cache.log 2>&1
  python bench/greedy_cache.py smollm2-135m --steps 2 --samples 2 --seq-len 128 --threads 1 \
    --json bench/results/greedy_cache_smollm2-135m_256tok.json > bench/results/greedy_cache_256tok.log 2>&1 ) &
python bench/strategies_bench.py gemma3-270m --out bench/results/gemma3-270m --threads 1 \
    --samples 2 --seq-len 128 --ppl-seq-len 256 --ppl-max-tokens 512 \
    > bench/results/gemma3-270m.log 2>&1
wait
# on the idle machine afterwards (the cost ratios quoted in the docs), then the docs tables:
python bench/metric_cost.py smollm2-135m gemma3-270m --out bench/results/metric_cost.md > bench/results/metric_cost.log 2>&1
python bench/fill_docs.py
