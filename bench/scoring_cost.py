"""Scoring cost vs one bare forward pass, and scoring's peak memory vs the model's weights.

Measured side by side in one run (interleaved A/B repetitions, median), since this
machine is noisy. Run:  python bench/scoring_cost.py [MODEL] [--samples 16 --seq-len 512]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import depthprune as dp  # noqa: E402
from depthprune.io.data import build_calibration
from depthprune.importance.metrics import BlockInfluence
from depthprune.importance.scoring import run_layer_metrics
from depthprune.arch.layout import input_device
from _memory import PeakMemory  # noqa: E402


def bare_forward(model, calib, batch_size):
    device = input_device(model)
    with torch.inference_mode():
        for ids, mask in calib.batches(batch_size):
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)


def scoring(model, calib, batch_size):
    metric = BlockInfluence(model.config.num_hidden_layers)
    run_layer_metrics(model, calib, [metric], batch_size=batch_size, progress=False)


def timed(fn, *args):
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--data", default="builtin")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 gives stable timings on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = dp.load_model(args.model, device=args.device, dtype=args.dtype)
    model = loaded.model
    calib = build_calibration(args.data, loaded.tokenizer, samples=args.samples, seq_len=args.seq_len,
                              progress=False)
    weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    bare_forward(model, calib, args.batch_size)  # warmup
    scoring(model, calib, args.batch_size)
    t_bare, t_score = [], []
    for _ in range(args.repeats):
        t_bare.append(timed(bare_forward, model, calib, args.batch_size))
        t_score.append(timed(scoring, model, calib, args.batch_size))
    with PeakMemory(args.device) as mem_bare:
        bare_forward(model, calib, args.batch_size)
    with PeakMemory(args.device) as mem_score:
        scoring(model, calib, args.batch_size)
    tokens = calib.num_tokens
    print(f"model {args.model} ({model.config.num_hidden_layers} layers, {args.dtype}, {args.device}); "
          f"{args.samples} x {args.seq_len} tokens, batch {args.batch_size}, {args.repeats} interleaved repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"bare forward  median {statistics.median(t_bare):.3f} s  ({tokens / statistics.median(t_bare):,.0f} tok/s)")
    print(f"BI scoring    median {statistics.median(t_score):.3f} s  ({tokens / statistics.median(t_score):,.0f} tok/s)")
    ratios = [s / b for s, b in zip(t_score, t_bare)]
    print(f"scoring / bare forward time ratio: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"weights {weights / 2**20:.1f} MiB; peak extra memory: bare forward {mem_bare.peak_bytes / 2**20:.1f} MiB "
          f"({mem_bare.peak_bytes / weights:.3f} x weights), scoring {mem_score.peak_bytes / 2**20:.1f} MiB "
          f"({mem_score.peak_bytes / weights:.3f} x weights)")


if __name__ == "__main__":
    main()
