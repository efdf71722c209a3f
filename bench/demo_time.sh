#!/usr/bin/env bash
# How long the README demo takes: its `depthprune prune ...` command, read from README.md, run twice in a
# fresh, empty model cache: first (dequantizes the GGUF and caches a safetensors copy: a one-off cost),
# then warm (what every later run costs). Prints wall and CPU time of each, the per-stage times `prune`
# reports and the machine's load (the figure is only meaningful on an idle machine).
#
#   bash bench/demo_time.sh            # after the README's install line
set -euo pipefail
cd "$(dirname "$0")/.."
demo=$(grep -m1 -o 'depthprune prune smollm2-135m[^`]*' README.md)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DEPTHPRUNE_CACHE="$work/cache" TOKENIZERS_PARALLELISM=false
TIMEFORMAT='wall %R s (cpu %U s user + %S s sys)'
echo "demo command (README.md): $demo"
echo "cpu cores: $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in first warm; do
    cmd=${demo/--out out\/smollm2-pruned/--out $work/$run}
    echo "== $run run$([ "$run" = first ] && echo ' (empty cache: GGUF dequantize + cache, then the demo)')"
    time (eval "$cmd" > "$work/$run.log" 2>&1) || { tail -20 "$work/$run.log"; exit 1; }
    grep -E '^time:|^saved' "$work/$run.log" || true
    grep -E '│ +(dense|pruned) ' "$work/$run.log" | tr -s ' ' || true
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
