"""``depthprune prune``: remove the least important layers and save a checkpoint that reloads anywhere."""

from __future__ import annotations

from depthprune.cli.base import console
from depthprune.cli.output import (bench_comparison, block_table, footer, perplexity_table, print_plan, score_table,
                                   search_summary, task_results)
from depthprune.cli.run import command
from depthprune.surgery.gguf_cut import gguf_output_paths


def print_prune(state) -> None:
    report, rec, plan = state.report, state.recipe, state.plan
    print_plan(plan)
    block = report.selection or {}
    if report.search:
        console.print(search_summary(report.search))
        auto = block.get("auto") or {}
        console.print(f"chosen: {auto.get('selection')} with repair {auto.get('repair')} (validation perplexity "
                      f"{auto.get('val_ppl')}; dense {report.search['dense']['val_ppl']})", highlight=False)
    elif report.strategy == "block" and block.get("block_scores") is not None:
        console.print(block_table(block["block_scores"], len(report.removed_layers), block["block_start"],
                                  report.metric))
    elif report.scores:
        console.print(score_table(report.scores, set(report.removed_layers), report.metric))
    if report.strategy == "given":
        console.print("layers given (--layers): nothing was scored", highlight=False)
    elif report.strategy != "auto":
        console.print(f"strategy {report.strategy}, metric {report.metric}", highlight=False)
        if report.selection.get("order") and report.strategy != "block":
            console.print(f"removal order (0-based, original numbering): {report.selection['order']}",
                          highlight=False)
    console.print(f"removed layers (0-based, original numbering): {report.removed_layers}", highlight=False)
    params = (f"; parameters {report.params_before:,} -> {report.params_after:,} "
              f"({report.params_after / report.params_before:.1%})" if report.params_before else "")
    console.print(f"layers {report.num_layers_before} -> {report.num_layers_after}{params}", highlight=False)
    if report.perplexity:
        perplexity_table(report.perplexity, rec.evaluation.ppl)
    if state.evals:
        task_results(state.evals, "task accuracy")
    if state.bench is not None:
        bench_comparison(state.bench.to_json())
    out = plan.outputs[0].path
    size = f"{report.checkpoint_bytes / 1e6:,.1f} MB" if report.checkpoint_bytes else ""
    if rec.output.format == "gguf":
        target = gguf_output_paths(out)[0] if plan.outputs[0].kind == "files" else out / "model.gguf"
        console.print(f"saved pruned GGUF to {target} ({size}, via {plan.executor})", highlight=False)
    else:
        quant = f"{rec.quantization.method} weights, " if rec.quantization.method else ""
        console.print(f"saved pruned checkpoint to {out} ({quant}{report.save_dtype}, {size} of weights, via "
                      f"{plan.executor})", highlight=False)
    footer(state)


command("prune", needs_out="the output directory, or FILE.gguf", printer=print_prune,
        model_help="Demo alias (smollm2-135m, gemma3-270m), .gguf file, local checkpoint dir or Hub id (optional with "
                   "--recipe).",
        doc="Remove the least important layers and save a checkpoint that reloads with plain transformers.\n\n"
            "The flags describe one recipe (recorded in DIR/depthprune.json); `--recipe` replays one.")
