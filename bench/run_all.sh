#!/bin/sh
# The exact commands behind the numbers in docs/strategies.md (run from the repository root).
set -e
export PYTHONPATH=src
python bench/strategies_bench.py smollm2-135m --out bench/results/smollm2-135m
python bench/greedy_cache.py smollm2-135m --steps 2 --samples 2 --seq-len 128 --json bench/results/greedy_cache_smollm2-135m.json
python bench/strategies_bench.py gemma3-270m --out bench/results/gemma3-270m
