"""Markdown tables for docs/scale.md from the JSON files bench/scale_bench.py wrote.

    python3 bench/scale_tables.py bench/results/scale_prune.json bench/results/scale_small.json [bench/results/scale_1.5b.json]
"""

from __future__ import annotations

import json
import sys

GIB = 2**30


def main(paths: list[str]) -> None:
    rows, prune, torchrun, commands = [], None, None, []
    for path in paths:
        try:
            data = json.load(open(path, encoding="utf-8"))
        except FileNotFoundError:
            continue
        commands.append(data["command"])
        for size, e in data.get("sizes", {}).items():
            rows.append((size, e, data))
        prune = data.get("prune", prune)
        torchrun = data.get("torchrun", torchrun)
    if rows:
        print("| model | weights (bf16) | tokens | in-memory peak RSS | streamed peak RSS | streamed / weights "
              "(above import baseline) | time streamed / in-memory | max abs score diff |")
        print("|---|---|---|---|---|---|---|---|")
        for size, e, data in rows:
            m, s = e["memory"], e["streamed"]
            print(f"| {size} | {e['weights_bytes'] / GIB:.2f} GiB | {data['samples']} x {data['seq_len']} | "
                  f"{m['peak_rss'] / GIB:.2f} GiB ({m['peak_over_weights']:.2f}x) | {s['peak_rss'] / GIB:.2f} GiB | "
                  f"{s['peak_over_weights']:.2f}x ({s['peak_above_baseline_over_weights']:.2f}x) | "
                  f"{e['time_ratio_streamed_over_memory']:.2f} ({s['seconds']:.1f} s / {m['seconds']:.1f} s) | "
                  f"{e['max_abs_score_diff']:.1e} |")
        print()
    if prune:
        d, m = prune["disk"], prune["memory"]
        print(f"Pruning {prune['model']} (layers {prune['removed_layers'][0]}-{prune['removed_layers'][-1]} removed):\n")
        print("| path | time | peak RSS | written |")
        print("|---|---|---|---|")
        print(f"| on disk (`prune_checkpoint`) | {d['seconds']:.1f} s | {d['peak_rss'] / GIB:.2f} GiB | "
              f"{d['written_bytes'] / GIB:.2f} GiB |")
        print(f"| load + `remove_layers` + `save_pretrained` | {m['seconds']:.1f} s | {m['peak_rss'] / GIB:.2f} GiB | "
              f"{m['written_bytes'] / GIB:.2f} GiB |")
        print(f"\nratio on disk / in memory: time {prune['time_ratio_disk_over_memory']:.2f}, "
              f"peak RSS {prune['rss_ratio_disk_over_memory']:.2f}\n")
    if torchrun:
        t = torchrun
        print(f"torchrun ({t['model']}, {t['samples']} x {t['seq_len']} tokens): 1 process {t['one_process_wall_s']:.1f} s, "
              f"2 processes {t['two_processes_wall_s']:.1f} s (ratio {t['wall_ratio_two_over_one']:.2f}, whole "
              f"command incl. imports and model load); max abs score difference {t['max_abs_score_diff']:.1e}; "
              f"tokens per rank {t['distributed']['tokens_per_rank']}\n")
    print("Commands:\n")
    for c in commands:
        print(f"    PYTHONPATH=src {c}")


if __name__ == "__main__":
    main(sys.argv[1:])
