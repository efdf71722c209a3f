"""``depthprune score``: every decoder layer's importance, as a JSON file and a bar chart."""

from __future__ import annotations

from depthprune.cli.base import console
from depthprune.cli.output import print_plan, score_table, timings_line
from depthprune.cli.run import command


def print_score(state) -> None:
    report = state.report
    if not state.extra.get("main_process", True):  # torchrun: rank 0 prints and writes
        return
    print_plan(state.plan)
    chosen = set((report.selection or {}).get("removed_layers") or [])
    console.print(score_table(report.scores, chosen, report.metric))
    console.print(f"removal order (least important first): {report.removal_order}", highlight=False)
    if report.scale and report.scale.get("distributed"):
        d = report.scale["distributed"]
        console.print(f"{d['world_size']} processes ({d['backend']}); samples per rank: {d['samples_per_rank']}; "
                      f"tokens per rank: {d['tokens_per_rank']}", highlight=False)
    if report.selection:
        console.print(f"{report.selection['strategy']} would remove layers (0-based, original numbering): "
                      f"{report.selection['removed_layers']}", highlight=False)
    json_path, png = state.plan.outputs[0].files
    console.print(f"wrote {json_path} and {png}", highlight=False)
    console.print(timings_line(state.timings), highlight=False)


command("score", needs_out="the scores FILE.json", printer=print_score,
        model_help="Demo alias, .gguf file, local checkpoint dir or Hub id.",
        doc="Score every decoder layer (Block Influence by default) and write scores.json + a bar chart.\n\n"
            "Under `torchrun --nproc_per_node N -m depthprune score ...` each process scores its share of the "
            "calibration samples (at least one each), the sums are all-reduced and rank 0 writes.")
