"""Markdown tables for docs/scale.md from the JSON files bench/scale_bench.py wrote.

    python3 bench/scale_tables.py bench/results/scale_prune.json bench/results/scale_small.json [bench/results/scale_1.5b.json]
"""

from __future__ import annotations

import json
import sys

GIB = 2**30


def main(paths: list[str]) -> None:
    rows, prune, torchrun, commands, large = [], None, None, [], []
    for path in paths:
        try:
            data = json.load(open(path, encoding="utf-8"))
        except FileNotFoundError:
            continue
        commands.append(data["command"])
        if "shape" in data:
            large.append(data)
            continue
        for size, e in data.get("sizes", {}).items():
            rows.append((size, e, data))
        prune = data.get("prune", prune)
        torchrun = data.get("torchrun", torchrun)
    if rows:
        print("| model | checkpoint (bf16) | weights at scoring dtype | tokens | in-memory peak RSS | streamed peak RSS | "
              "streamed above import baseline / weights at scoring dtype | streamed above the runtime / weights at "
              "scoring dtype | time streamed / in-memory | activations spilled | max abs score diff |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for size, e, data in rows:
            m, s = e["memory"], e["streamed"]
            scoring = e.get("scoring_weights_bytes", e["weights_bytes"])
            above = (s["peak_rss"] - s["baseline_rss"]) / scoring
            spilled = s["stream"]["spilled_bytes"]
            runtime = e.get("runtime", {}).get("runtime_rss")
            over_runtime = f"{(s['peak_rss'] - runtime) / scoring:.2f}x" if runtime else "not measured"
            print(f"| {size} | {e['weights_bytes'] / GIB:.2f} GiB | {scoring / GIB:.2f} GiB ({data.get('dtype', 'bfloat16')}) | "
                  f"{data['samples']} x {data['seq_len']} | {m['peak_rss'] / GIB:.2f} GiB | {s['peak_rss'] / GIB:.2f} GiB | "
                  f"{above:.2f}x | {over_runtime} | {e['time_ratio_streamed_over_memory']:.2f} ({s['seconds']:.1f} s / {m['seconds']:.1f} s) | "
                  f"{spilled / GIB:.2f} GiB (budget {data['activation_budget_mb']} MiB) | {e['max_abs_score_diff']:.1e} |")
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
    for data in large:
        shape = data["shape"]
        print(f"Larger than memory: {data['make']['params'] / 1e9:.2f} B parameters (hidden {shape['hidden_size']}, "
              f"{shape['num_hidden_layers']} layers, MLP {shape['intermediate_size']}), "
              f"{data['checkpoint_bytes'] / GIB:.1f} GiB of bf16 safetensors, on a machine with "
              f"{data['mem_total_bytes'] / GIB:.1f} GiB of memory; calibration {data['samples']} x {data['seq_len']} "
              f"tokens, {data['remove']} layers removed:\n")
        print("| step | command | path | wall | peak RSS | read from disk | written |")
        print("|---|---|---|---|---|---|---|")
        for step in ("score", "prune", "repair"):
            r = data.get(step)
            if r is None:
                continue
            argv = r["argv"][r["argv"].index("depthprune") + 1:]
            shown = " ".join(a if "/" not in a else a.rsplit("/", 1)[-1].upper().replace(".JSON", ".json")
                             for a in argv)
            rec = r.get("record") or {}
            path = rec.get("executor") or ("layer-streamed" if (rec.get("scale") or {}).get("offload") == "layers"
                                           else "in-memory")
            written = f"{rec['checkpoint_bytes'] / GIB:.1f} GiB" if rec.get("checkpoint_bytes") else "scores"
            print(f"| {step} | `depthprune {shown}` | {path} | {r['seconds']:.0f} s | {r['peak_rss_bytes'] / GIB:.2f} GiB | "
                  f"{r['disk_read_bytes'] / GIB:.1f} GiB | {written} |")
        print()
    print("Commands:\n")
    for c in dict.fromkeys(c for d in large for c in [d.get(k, {}).get("bench_command") for k in ("score", "prune", "repair")] if c):
        print(f"    PYTHONPATH=src {c}")
    commands = [c for c in commands if not large or c not in [d["command"] for d in large]]
    for c in commands:
        print(f"    PYTHONPATH=src {c}")


if __name__ == "__main__":
    main(sys.argv[1:])
