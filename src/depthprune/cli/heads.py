"""``depthprune heads``: attention head / KV-group importance, pattern statistics, head removal."""

from __future__ import annotations

from rich.table import Table

from depthprune.cli.base import console
from depthprune.cli.output import footer
from depthprune.cli.run import command


def print_heads(state) -> None:
    report, rec = state.result, state.recipe
    table = Table(title=f"pattern statistics (two disjoint calibration halves of {rec.calibration.samples // 2} "
                        "sequences)")
    for col in ("scores", "split-half rho", "within-layer split-half rho", "neighbour-layer rho", "depth rho",
                "between-layer share"):
        table.add_column(col, justify="right")
    for key, st in report.patterns.items():
        table.add_row(key, *[f"{st[k]:.3f}" if k in st else "-" for k in (
            "split_half_spearman", "split_half_within_layer_spearman", "neighbour_layer_spearman", "depth_spearman",
            "between_layer_share")])
    console.print(table)
    removal = state.extra.get("head_removal")
    if removal is not None:
        kind = "removed (checkpoint in model/)" if removal.checkpoint else f"masked only: {removal.reason}"
        console.print(f"heads {kind}; {removal.parameter_share:.1%} of parameters", highlight=False)
        for role, r in removal.perplexity.items():
            console.print(f"perplexity {role}: {r['ppl']:.2f}", highlight=False)
    out = state.plan.outputs[0].path
    console.print(f"wrote {out}/heads.json, heads.png" + (", model/" if state.pruned is not None else ""),
                  highlight=False)
    footer(state)


command("heads", needs_out="the output directory", printer=print_heads,
        model_help="Demo alias, .gguf file, local checkpoint dir or Hub id.",
        doc="Importance of every attention head / KV group per layer, pattern statistics vs layer importance, head "
            "removal.")
