"""``depthprune repair``: repair an existing depthprune output (linear maps, LoRA, distillation)."""

from __future__ import annotations

from depthprune.cli.base import console
from depthprune.cli.output import footer, perplexity_table
from depthprune.cli.run import command


def print_repair(state) -> None:
    report = state.report
    if state.perplexity:
        perplexity_table(state.perplexity, state.recipe.evaluation.ppl, names={"pruned": "repaired"})
    out = state.plan.outputs[0].path
    console.print(f"saved repaired checkpoint to {out} ({report.save_dtype})", highlight=False)
    footer(state)


command("repair", needs_out="where to write the repaired checkpoint", printer=print_repair,
        model_help="Output directory of `depthprune prune`.",
        doc="Repair an existing depthprune output (linear needs the dense model: read from its depthprune.json).")
