"""``depthprune eval``: perplexity on a text SPEC and/or lm-eval task accuracy of one model."""

from __future__ import annotations

from depthprune.cli.base import console
from depthprune.cli.output import task_results, timings_line
from depthprune.cli.run import command


def print_eval(state) -> None:
    rec = state.recipe
    ev = rec.evaluation
    if "model" in state.perplexity:
        r = state.perplexity["model"]
        console.print(f"perplexity {r['ppl']:.3f} over {r['tokens']} tokens ({ev.ppl}, windows of {ev.ppl_seq_len})",
                      highlight=False)
    if state.evals:
        task_results(state.evals, f"lm-eval on {rec.model}")
    for spec in state.plan.outputs:
        console.print(f"wrote {spec.path}", highlight=False)
    console.print(timings_line(state.timings), highlight=False)


command("eval", printer=print_eval, model_help="Demo alias, .gguf file, local checkpoint dir or Hub id.",
        doc="Perplexity on a text SPEC and/or task accuracy through lm-evaluation-harness (dense or pruned model).")
