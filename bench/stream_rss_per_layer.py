"""Resident set after each streamed layer, with and without handing freed memory back to the OS.

Each mode runs in a fresh child process on a checkpoint bench/scale_bench.py wrote (default: the 0.6b one) and scores
the first layers layer-streamed with Block Influence on random token ids; the child prints its VmRSS after each layer
is freed. ``no-trim`` replaces :func:`depthprune.importance.streamed.return_freed_memory` with a no-op.

    python3 bench/stream_rss_per_layer.py --model /work/depthprune-scale/0.6b --layers 7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from scale_bench import rss_now

ROOT = Path(__file__).resolve().parents[1]


def child(model: str, layers: int, samples: int, trim: bool) -> dict:
    import torch

    import depthprune.importance.streamed as streamed_module
    from depthprune.importance.metrics import make_metric
    from depthprune.io.data import from_tensors

    torch.set_num_threads(1)
    if not trim:
        streamed_module.return_freed_memory = lambda: None
    streamed = streamed_module.StreamedModel(model)
    ids = torch.randint(3, 512, (samples, 256), generator=torch.Generator().manual_seed(0))
    after: list[int] = []
    streamed_module.run_layer_metrics_streamed(
        streamed, from_tensors(ids, torch.ones_like(ids)), [make_metric("bi", streamed.num_layers)], batch_size=8,
        progress=False, last_layer=layers - 1, after_layer=lambda i: after.append(rss_now()))
    return {"trim": trim, "rss_after_layer": after}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="/work/depthprune-scale/0.6b")
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--child", choices=["trim", "no-trim"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stream_rss_per_layer.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.layers, args.samples, args.child == "trim")))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    results = {"command": " ".join(["python3", "bench/stream_rss_per_layer.py", *sys.argv[1:]]), "model": args.model,
               "samples": args.samples, "seq_len": 256}
    for mode in ("no-trim", "trim"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--layers", str(args.layers),
                              "--samples", str(args.samples), "--child", mode], capture_output=True, text=True,
                             env=env, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])["rss_after_layer"]
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for mode in ("no-trim", "trim"):
        print(mode, " ".join(f"{r / 2**30:.2f}" for r in results[mode]), "GiB after each layer")


if __name__ == "__main__":
    main()
