"""ShortGPT on the bundled models: BI per layer, which layers go at 25%, WikiText-2 perplexity before/after.

Run:  python bench/bundled_models.py [--models smollm2-135m,gemma3-270m] [--data-dir ../shared/data]
Prints a Markdown section (used for docs/shortgpt-results.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import depthprune as dp
from depthprune.io.data import iter_texts, sequential_windows
from depthprune.evaluation.perplexity import perplexity_on


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--ppl-max-tokens", type=int, default=16384)
    parser.add_argument("--ratio", type=float, default=0.25)
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    calib = str(data_dir / "gutenberg")
    wiki = str(data_dir / "wikitext-2-raw" / "wiki.test.raw")
    print(f"Calibration: `{calib}` ({args.samples} x {args.seq_len} tokens, seed 0). Perplexity: `{wiki}`, "
          f"non-overlapping windows of {args.seq_len}, first {args.ppl_max_tokens} tokens. float32, CPU.\n")
    for alias in args.models.split(","):
        t0 = time.perf_counter()
        loaded = dp.load_model(alias)
        report = dp.score(loaded, data=calib, samples=args.samples, seq_len=args.seq_len, batch_size=4,
                          progress=False)
        n = dp.selection.removal_count(report.num_layers, ratio=args.ratio)
        removed = sorted(report.removal_order[:n])
        windows = sequential_windows(loaded.tokenizer, iter_texts(wiki), seq_len=args.seq_len,
                                     max_tokens=args.ppl_max_tokens, source=wiki)
        dense = perplexity_on(loaded.model, windows, progress=False)
        pruned_model = dp.remove_layers(loaded.model, removed)
        pruned = perplexity_on(pruned_model, windows, progress=False)
        print(f"### {alias} ({report.num_layers} layers)\n")
        print("| layer | " + " | ".join(str(i) for i in range(report.num_layers)) + " |")
        print("|---" * (report.num_layers + 1) + "|")
        print("| BI | " + " | ".join(f"{s:.3f}" for s in report.scores) + " |\n")
        print(f"Removed at {args.ratio:.0%} ({n} layers, 0-based): {removed}\n")
        print(f"| model | WikiText-2 PPL | tokens |\n|---|---|---|\n| dense | {dense.ppl:.2f} | {dense.tokens} |\n"
              f"| BI-pruned (-{n}) | {pruned.ppl:.2f} | {pruned.tokens} |\n")
        print(f"(wall time {time.perf_counter() - t0:.0f} s)\n", flush=True)


if __name__ == "__main__":
    import depthprune.selection.counts

    main()
