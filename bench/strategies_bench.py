"""Benchmark: held-out perplexity after removing ~10/25/40% of layers, every metric x strategy, and the
cost of each metric as a ratio to one bare forward pass over the same calibration tokens.

    PYTHONPATH=src python bench/strategies_bench.py smollm2-135m --out bench/results/smollm2-135m
    PYTHONPATH=src python bench/strategies_bench.py gemma3-270m --out bench/results/gemma3-270m

Writes OUT/ (sweep.csv/json/png, angular_heatmap.png via depthprune.reporting.sweep_files.render_sweep) and
OUT.costs.json, OUT.md (markdown tables for docs/strategies.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import depthprune as dp
from depthprune.io.data import build_calibration, iter_texts, sequential_windows
from depthprune.importance.loss_metrics import naive_loss
from depthprune.selection.strategies import STRATEGIES, compute_scores
from depthprune.pipeline.sweep import run_sweep
from depthprune.reporting.sweep_files import render_sweep

METRICS = ["bi", "angular", "angular-all", "relative-magnitude", "ppl", "taylor", "reverse-order", "random"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="/work/shared/data/gutenberg")
    ap.add_argument("--ppl", default="/work/shared/data/wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--ppl-seq-len", type=int, default=256)
    ap.add_argument("--ppl-max-tokens", type=int, default=1024)
    ap.add_argument("--ratios", default="0.1,0.25,0.4")
    ap.add_argument("--skip", default="", help="comma-separated metric/strategy pairs to leave out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    loaded = dp.load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    total = model.config.num_hidden_layers
    counts = sorted({max(1, math.floor(float(r) * total)) for r in args.ratios.split(",")})
    calib = build_calibration(args.data, tok, samples=args.samples, seq_len=args.seq_len, progress=False)
    windows = sequential_windows(tok, iter_texts(args.ppl), seq_len=args.ppl_seq_len, max_tokens=args.ppl_max_tokens,
                                 source=args.ppl)
    print(f"loaded {args.model} ({total} layers) in {time.perf_counter() - t0:.1f}s; counts {counts}", flush=True)

    # cost of each metric alone, as a ratio to one bare forward pass (with LM head) over the same tokens
    costs: dict[str, float] = {}
    naive_loss(model, calib, batch_size=args.batch_size)  # warm-up
    t = time.perf_counter(); naive_loss(model, calib, batch_size=args.batch_size)
    bare = time.perf_counter() - t
    pre = {}
    for m in METRICS:
        t = time.perf_counter()
        pre[m] = compute_scores(model, calib, [m], batch_size=args.batch_size, progress=False)[m]
        costs[m] = (time.perf_counter() - t) / bare
        print(f"cost {m}: {costs[m]:.2f} x bare forward", flush=True)
    t = time.perf_counter()
    compute_scores(model, calib, ["bi", "angular", "angular-all", "relative-magnitude"], batch_size=args.batch_size,
                   progress=False)
    costs["bi+angular+angular-all+relative-magnitude (one pass)"] = (time.perf_counter() - t) / bare

    skip = [s for s in args.skip.split(",") if s]
    result = run_sweep(model, tok, calib, windows, metrics=METRICS, strategies=list(STRATEGIES), counts=counts,
                       batch_size=args.batch_size, source=args.model, skip=skip,
                       precomputed={k: pre[k] for k in ("ppl", "taylor")}, progress=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    render_sweep(result, out)
    (out / "sweep.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    timing = {"bare_forward_s": bare, "calibration_tokens": calib.num_tokens, "cost_ratio": costs,
              "sweep_timings_s": result.timings_s, "wall_s": time.perf_counter() - t0, "threads": args.threads,
              "settings": vars(args)}
    Path(f"{out}.costs.json").write_text(json.dumps(timing, indent=2) + "\n")

    # markdown
    lines = [f"### {args.model} ({total} layers)", "",
             f"Calibration {calib.num_tokens} tokens ({args.samples} x {args.seq_len}, {args.data}); "
             f"PPL on {result.dense['tokens']} tokens of {args.ppl} (windows of {args.ppl_seq_len}). "
             f"Dense PPL {result.dense['ppl']:.2f}.", ""]
    header = "| metric | strategy | " + " | ".join(f"-{n} ({n / total:.0%}) PPL" for n in counts) + " | removed at max |"
    lines += [header, "|" + "---|" * (len(counts) + 3)]
    rows: dict[tuple[str, str], dict[int, dp.sweep.SweepPoint]] = {}
    for p in result.points:
        rows.setdefault((p.metric, p.strategy), {})[p.n_removed] = p
    best = result.best()
    for (m, s), pts in rows.items():
        cells = []
        for n in counts:
            v = f"{pts[n].ppl:.1f}"
            cells.append(f"**{v}**" if pts[n].ppl == best[n].ppl else v)
        lines.append(f"| {m} | {s} | " + " | ".join(cells) + f" | {pts[counts[-1]].removed_layers} |")
    lines += ["", "Best per count: " + "; ".join(f"-{n}: {best[n].metric}/{best[n].strategy} ({best[n].ppl:.1f})"
                                                 for n in counts), ""]
    if result.skipped:
        lines += ["Skipped: " + "; ".join(result.skipped), ""]
    lines += ["| metric | cost (x one bare forward pass) |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in costs.items()]
    lines += ["", f"Bare forward over the calibration set: {bare:.2f} s ({args.threads} threads).", ""]
    Path(f"{out}.md").write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
