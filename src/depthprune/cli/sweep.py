"""``depthprune sweep``: perplexity (and task accuracy) against the number of layers removed."""

from __future__ import annotations

from rich.table import Table

from depthprune.cli.base import console
from depthprune.cli.output import timings_line
from depthprune.cli.run import command


def print_sweep(state) -> None:
    result = state.result
    table = Table(title=f"perplexity on {state.recipe.evaluation.ppl} vs layers removed "
                        f"(dense {result.dense['ppl']:.2f})")
    table.add_column("metric/strategy")
    for n in result.counts:
        table.add_column(f"-{n}", justify="right")
    for key, pts in result.lines().items():
        table.add_row(key, *[f"{v:.2f}" for _, v in pts[1:]])
    console.print(table)
    for note in result.skipped:
        console.print(f"skipped {note}", highlight=False)
    for task in result.dense_tasks or {}:
        acc = Table(title=f"{task} accuracy vs layers removed (dense {result.dense_tasks[task]['acc']:.3f})")
        acc.add_column("metric/strategy")
        for n in result.counts:
            acc.add_column(f"-{n}", justify="right")
        for key, pts in result.accuracy_lines(task).items():
            acc.add_row(key, *[f"{a:.3f}" for _, a, _ in pts[1:]])
        console.print(acc)
        for key, ns in result.drops()[task].items():
            if ns:
                console.print(f"sudden drop in {task} {key} at {ns} layers removed", highlight=False)
    out = state.plan.outputs[0].path
    console.print(f"wrote {out}/sweep.csv, sweep.json, sweep.png" +
                  (", angular_heatmap.png" if result.angular_blocks else ""), highlight=False)
    console.print(timings_line(state.timings), highlight=False)


command("sweep", needs_out="the output directory", printer=print_sweep,
        model_help="Demo alias, .gguf file, local checkpoint dir or Hub id.",
        doc="Perplexity vs layers removed for each metric/strategy (CSV, JSON, line plot, angular heatmap).")
