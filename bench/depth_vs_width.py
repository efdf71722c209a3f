"""Depth vs width redundancy (ShortGPT section 3; docs/paper-findings.md): held-out perplexity against the share
of parameters removed, by removing whole layers vs by removing attention heads, same model, same calibration.

One head scoring pass (``depthprune.api.heads``: two disjoint calibration halves; the layer BI of the same
halves comes with it), then:

* width: for K = 1 .. units-1, the K least important units (KV groups, or query heads for single-group models) of
  every layer, removed physically when transformers can express the result, else evaluated masked (recorded);
* depth: for N in --layer-counts, the N layers of lowest BI (mean of both halves; one-shot), cut by
  ``depthprune.surgery.pruned_copy``.

Share of parameters = removed / all parameters (tied embeddings counted once). Perplexity: the first
--ppl-max-tokens tokens of WikiText-2-raw test (disjoint from the Gutenberg calibration).

    PYTHONPATH=src python bench/depth_vs_width.py smollm2-135m --unit group --select-by loss \\
        --json bench/results/paper-findings/depth-vs-width-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from depthprune.evaluation.perplexity import perplexity
from depthprune.surgery.in_memory import pruned_copy
from depthprune.arch.layout import parameter_count
from depthprune.api import heads as score_heads
from depthprune.pipeline.heads import remove_lowest_heads

log = logging.getLogger("depth_vs_width")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--unit", default="group", choices=["group", "query"])
    ap.add_argument("--select-by", default="loss", choices=["loss", "oproj-norm"])
    ap.add_argument("--layer-counts", default="1,2,3,4,6,8")
    ap.add_argument("--ppl-max-tokens", type=int, default=2048)
    ap.add_argument("--ppl-seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    report, loaded = score_heads(args.model, data=str(args.data / "gutenberg"), samples=args.samples,
                                 seq_len=args.seq_len, metrics=[args.select_by], units=[args.unit], progress=False)
    log.info("heads scored (%.0fs)", time.time() - t0)
    model, tok = loaded.model, loaded.tokenizer
    ppl_spec = str(args.data / "wikitext-2-raw" / "wiki.test.raw")

    def ppl(m) -> float:
        return perplexity(m, tok, ppl_spec, seq_len=args.ppl_seq_len, max_tokens=args.ppl_max_tokens,
                          progress=False).ppl

    total = parameter_count(model)
    out: dict = {"model": args.model, "settings": {k: str(v) for k, v in vars(args).items()},
                 "parameters": total, "dense_ppl": ppl(model), "width": [], "depth": []}
    n_units = len(report.combined(f"{args.select_by}/{args.unit}")[0])
    for k in range(1, n_units):
        record, _ = remove_lowest_heads(model, tok, report, per_layer=k, unit=args.unit, select_by=args.select_by,
                                        ppl=ppl_spec, ppl_seq_len=args.ppl_seq_len,
                                        ppl_max_tokens=args.ppl_max_tokens, progress=False)
        role = "heads_removed" if record.checkpoint else "heads_masked"
        out["width"].append({"per_layer": k, "unit": args.unit, "share": record.parameter_share,
                             "ppl": record.perplexity[role]["ppl"], "checkpoint": record.checkpoint,
                             "reason": record.reason})
        log.info("width: %d %s per layer, share %.3f, ppl %.2f (%s)", k, args.unit, record.parameter_share,
                 record.perplexity[role]["ppl"], role)
    bi = np.mean([report.layer_scores["bi"]["a"], report.layer_scores["bi"]["b"]], axis=0)
    order = np.argsort(bi, kind="mergesort").tolist()
    for n in (int(x) for x in args.layer_counts.split(",")):
        layers = sorted(order[:n])
        pruned = pruned_copy(model, layers)
        share = 1 - parameter_count(pruned) / total
        p = ppl(pruned)
        out["depth"].append({"layers": n, "removed_layers": layers, "share": share, "ppl": p})
        log.info("depth: %d layers %s, share %.3f, ppl %.2f", n, layers, share, p)
        del pruned
    out["seconds"] = time.time() - t0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    plot(out, args.json.with_suffix(".png"))
    print(render(out))
    return 0


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for key, label, colour in (("depth", "layers removed (lowest BI)", "#d62728"),
                               ("width", {"group": "attention KV groups", "query": "attention query heads"}[out["settings"]["unit"]]
                               + " removed per layer", "#1f77b4")):
        pts = sorted((p["share"] * 100, p["ppl"]) for p in out[key])
        ax.plot([0] + [x for x, _ in pts], [out["dense_ppl"]] + [y for _, y in pts], "o-", color=colour, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("share of parameters removed (%)")
    ax.set_ylabel("WikiText-2 perplexity (log)")
    ax.set_title(f"{out['model']}: depth vs width")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render(out: dict) -> str:
    lines = [f"Model `{out['model']}`: dense WikiText-2 PPL {out['dense_ppl']:.2f}", "",
             "| removed | share of parameters | PPL | x dense |", "|---|---:|---:|---:|"]
    rows = [(p["share"], f"{p['layers']} layers {p['removed_layers']}", p["ppl"]) for p in out["depth"]]
    rows += [(p["share"], f"{p['per_layer']} {p['unit']}(s) per layer"
              + ("" if p["checkpoint"] else " (masked)"), p["ppl"]) for p in out["width"]]
    for share, what, ppl in sorted(rows):
        lines.append(f"| {what} | {100 * share:.1f}% | {ppl:.2f} | {ppl / out['dense_ppl']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
