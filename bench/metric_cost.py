"""Benchmark: cost of scoring every layer with each metric, as a ratio to one bare forward pass
(embedding, all layers, final norm, LM head) over the same calibration tokens; min over repeats.

    PYTHONPATH=src python bench/metric_cost.py smollm2-135m gemma3-270m --out bench/results/metric_cost.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import depthprune as dp
from depthprune.io.data import build_calibration
from depthprune.importance.loss_metrics import naive_loss
from depthprune.selection.strategies import compute_scores

STREAMING = ["bi", "angular", "angular-all", "relative-magnitude"]
ALL = STREAMING + ["ppl", "taylor", "reverse-order", "random"]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="/work/shared/data/gutenberg")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table: dict[str, dict[str, float]] = {}
    for name in args.models:
        loaded = dp.load_model(name)
        model = loaded.model
        calib = build_calibration(args.data, loaded.tokenizer, samples=args.samples, seq_len=args.seq_len,
                                  progress=False)
        naive_loss(model, calib, batch_size=args.batch_size)  # warm-up
        bare = best_of(lambda: naive_loss(model, calib, batch_size=args.batch_size), args.repeats)
        row = {"bare forward (s)": bare}
        for m in ALL:
            reps = 1 if m in ("ppl", "taylor") else args.repeats
            row[m] = best_of(lambda m=m: compute_scores(model, calib, [m], batch_size=args.batch_size,
                                                        progress=False), reps) / bare
        row["4 streaming metrics, one pass"] = best_of(
            lambda: compute_scores(model, calib, STREAMING, batch_size=args.batch_size, progress=False),
            args.repeats) / bare
        table[name] = row
        print(name, json.dumps(row), flush=True)
        del loaded, model
    keys = list(next(iter(table.values())))
    lines = [f"Cost as a multiple of one bare forward pass over the same {args.samples} x {args.seq_len} calibration "
             f"tokens ({args.threads} thread, min of {args.repeats} runs; ppl/taylor: 1 run).", "",
             "| metric | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
    for k in keys:
        cells = [f"{table[n][k]:.2f} s" if k.startswith("bare") else f"{table[n][k]:.2f}x" for n in table]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(table, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
