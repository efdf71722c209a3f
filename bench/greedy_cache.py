"""Benchmark: greedy-ppl with cached layer inputs vs the naive loop (a full forward pass per candidate).

    PYTHONPATH=src python bench/greedy_cache.py smollm2-135m --steps 2 --samples 2 --seq-len 128

Both loops must pick the same layers; prints the wall-clock ratio naive / cached and the
decoder-layer calls each one made. The naive loop uses a weight-sharing pruned view (no copies),
so the ratio measures only the saved computation.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import depthprune as dp
from depthprune.io.data import build_calibration
from depthprune.importance.loss_metrics import naive_loss
from depthprune.selection.greedy import greedy_ppl
from depthprune.surgery.in_memory import pruned_view


def naive_greedy(model, calib, steps: int, batch_size: int) -> tuple[list[int], int]:
    total = model.config.num_hidden_layers
    order: list[int] = []
    layer_calls = 0
    for _ in range(steps):
        trial = {}
        for c in range(total):
            if c in order:
                continue
            with pruned_view(model, order + [c]):
                trial[c] = naive_loss(model, calib, batch_size=batch_size)
            layer_calls += (total - len(order) - 1) * calib.num_batches(batch_size)
        order.append(min(trial, key=lambda c: (trial[c], c)))
    return order, layer_calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default="/work/shared/data/gutenberg")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = dp.load_model(args.model)
    model = loaded.model
    calib = build_calibration(args.data, loaded.tokenizer, samples=args.samples, seq_len=args.seq_len, progress=False)
    naive_loss(model, calib, batch_size=args.batch_size)  # warm-up

    t = time.perf_counter()
    cached = greedy_ppl(model, calib, args.steps, batch_size=args.batch_size, progress=False)
    t_cached = time.perf_counter() - t
    t = time.perf_counter()
    naive_order, naive_calls = naive_greedy(model, calib, args.steps, args.batch_size)
    t_naive = time.perf_counter() - t
    result = {"model": args.model, "steps": args.steps, "calibration_tokens": calib.num_tokens,
              "cached_order": cached.order, "naive_order": naive_order, "same_layers": cached.order == naive_order,
              "cached_s": round(t_cached, 2), "naive_s": round(t_naive, 2), "speedup": round(t_naive / t_cached, 2),
              "naive_layer_calls": naive_calls, "threads": args.threads}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
