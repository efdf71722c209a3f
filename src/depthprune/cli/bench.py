"""``depthprune bench``: prefill/decode throughput, peak memory and size, optionally against a baseline."""

from __future__ import annotations

from depthprune.cli.base import console
from depthprune.cli.output import bench_comparison, bench_single
from depthprune.cli.run import command


def print_bench(state) -> None:
    data = state.bench.to_json()
    if "ratios" in data:
        bench_comparison(data)
    else:
        bench_single(data)
    for spec in state.plan.outputs:
        console.print(f"wrote {spec.path}", highlight=False)


command("bench", printer=print_bench, model_help="Demo alias, .gguf file, local checkpoint dir or Hub id.",
        doc="Prefill/decode throughput, peak memory and size of a model, optionally side by side with a baseline.")
