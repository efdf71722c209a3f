"""Dense vs pruned speed, side by side in one process: measured time ratios next to the ideal FLOP ratios.

    PYTHONPATH=src python -m depthprune prune smollm2-135m --ratio 0.25 --data /work/shared/data/gutenberg \
        --samples 32 --seq-len 256 --out /tmp/smol-pruned
    PYTHONPATH=src python bench/speed_pruned_vs_dense.py --dense smollm2-135m --pruned /tmp/smol-pruned

Ratios are pruned/dense (time and FLOPs: lower is faster). See docs/speed.md for what is measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from depthprune.evaluation.speed import compare, parse_seq_lens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", default="smollm2-135m")
    parser.add_argument("--pruned", default="/tmp/smol-pruned")
    parser.add_argument("--seq-lens", default="128,512")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadiest on a busy box)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="also write the full comparison JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    result = compare(args.dense, args.pruned, seq_lens=parse_seq_lens(args.seq_lens), prompt_len=args.prompt_len,
                     decode_tokens=args.decode_tokens, batch_size=args.batch_size, repeats=args.repeats,
                     warmup=args.warmup, device=args.device, dtype=args.dtype, threads=args.threads,
                     progress=False)
    result.command = " ".join([os.path.basename(sys.executable), *sys.argv])
    data = result.to_json()
    b, c, r = data["baseline"], data["candidate"], data["ratios"]
    print(f"dense : {b['model']}  ({b['num_layers']} layers, {b['params']:,} params)")
    print(f"pruned: {c['model']}  ({c['num_layers']} layers, {c['params']:,} params)")
    print(f"{b['dtype']} on {b['device']}, batch {args.batch_size}, median of {args.repeats} interleaved runs, "
          f"{b['environment']}")
    print()
    print(f"{'workload':<18}{'dense tok/s':>13}{'pruned tok/s':>14}{'time ratio':>12}{'ideal FLOPs':>13}"
          f"{'speedup':>9}{'ideal':>8}")
    for key, row in r["workloads"].items():
        print(f"{key:<18}{row['baseline_tokens_per_s']:>13,.1f}{row['candidate_tokens_per_s']:>14,.1f}"
              f"{row['time_ratio']:>12.3f}{row['ideal_flop_ratio']:>13.3f}{row['speedup']:>9.3f}"
              f"{row['ideal_speedup']:>8.3f}")
    mib = 2 ** 20
    print()
    print(f"layers ratio {r['layers_ratio']:.3f}; params ratio {r['params_ratio']:.3f}")
    print(f"peak memory dense {b['peak_memory_bytes'] / mib:,.1f} MiB, pruned {c['peak_memory_bytes'] / mib:,.1f} MiB "
          f"(ratio {r['peak_memory_ratio']:.3f}; {b['memory_method']})")
    for key in r["workloads"]:
        wb = next(w for w in b["workloads"] if w["key"] == key)
        wc = next(w for w in c["workloads"] if w["key"] == key)
        print(f"  working memory {key:<14} dense {wb['peak_memory_bytes'] / mib:7.1f} MiB, "
              f"pruned {wc['peak_memory_bytes'] / mib:7.1f} MiB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
