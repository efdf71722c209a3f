"""``depthprune report``: report.md, a self-contained report.html and a refreshed model card for an output."""

from __future__ import annotations

from depthprune.cli.base import console
from depthprune.cli.run import command


def print_report(state) -> None:
    out = state.plan.outputs[0].path
    console.print(f"wrote {', '.join(str(p) for p in state.result.values())}", highlight=False)
    console.print(f"(the report of {state.recipe.model} is in {out}; the output itself was not changed)",
                  highlight=False)


command("report", needs_out="the report's own directory", printer=print_report,
        model_help="Output directory of `depthprune prune` (reads depthprune.json, eval/*.json, bench.json).",
        doc="Write report.md, a self-contained report.html, the plots and a refreshed model card into --out.")
