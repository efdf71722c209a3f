"""What the commands print: tables and one-line summaries (rich; no user string is read as markup)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from depthprune.cli.base import console
from depthprune.reporting.tables import search_table, speed_table

TIMING_ORDER = ("loading", "calibration", "search", "scoring", "surgery", "repair", "quantization", "perplexity", "tasks",
                "bench", "sweep", "save")


def score_table(scores: list[float], removed: set[int], metric: str) -> Table:
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    rank = {layer: r for r, layer in enumerate(order)}
    table = Table(title=f"{metric} per layer (0-based, original numbering; rank 0 = least important)")
    table.add_column("layer", justify="right")
    table.add_column(metric, justify="right")
    table.add_column("rank", justify="right")
    if removed:  # the decision column only when there is a decision (prune, or score --strategy --remove)
        table.add_column("decision")
    for i, value in enumerate(scores):
        cells = [str(i), f"{value:.5f}", str(rank[i])]
        decision = [Text("removed", style="red") if i in removed else "kept"] if removed else []
        table.add_row(*cells, *decision)
    return table


def block_table(block_scores: list[float], n: int, start: int, metric: str) -> Table:
    """Strategy ``block``: the score of every contiguous run of ``n`` layers, which is what the choice is made on."""
    order = sorted(range(len(block_scores)), key=lambda s: (block_scores[s], s))
    rank = {s: r for r, s in enumerate(order)}
    what = "angular distance between its input and output" if metric.startswith("angular") else f"sum of {metric}"
    table = Table(title=f"blocks of {n} layers: {what} (0-based, original numbering; rank 0 = removed first)")
    for col in ("layers", "score", "rank", "decision"):
        table.add_column(col, justify="right" if col != "decision" else "left")
    for s, value in enumerate(block_scores):
        decision = Text("removed", style="red") if s == start else ""
        table.add_row(f"{s}-{s + n - 1}", f"{value:.5f}", str(rank[s]), decision)
    return table


def timings_line(timings: dict) -> str:
    """``time: loading 3.2 s, calibration 1.0 s, ... (total 41.7 s)`` in pipeline order."""
    shown = {n: t for n, t in timings.items() if t >= 0.05}  # a stage with nothing to do (select of --layers)
    names = [n for n in TIMING_ORDER if n in shown] + [n for n in shown if n not in TIMING_ORDER]
    total = sum(timings.values())
    if not names:
        return f"time: {total:.2f} s in all"
    parts = ", ".join(f"{n} {timings[n]:.1f} s" for n in names)
    return f"time: {parts} (total {total:.1f} s)"


def task_results(by_role: dict, title: str) -> None:
    """One row per task and metric, one column per role (dense/pruned), value ± stderr."""
    roles = list(by_role)
    first = next(iter(by_role.values()))
    table = Table(title=f"{title} (lm-eval {first.get('lm_eval_version')}, limit {first.get('limit')})")
    for col in ["task", "metric", *roles, "n"]:
        table.add_column(col, justify="right")
    for name, entry in first["tasks"].items():
        for metric in [m for m in ("acc", "acc_norm", "perplexity") if m in entry["metrics"]]:
            cells = []
            for role in roles:
                metrics = by_role[role]["tasks"].get(name, {}).get("metrics", {})
                value, stderr = metrics.get(metric), metrics.get(f"{metric}_stderr")
                cells.append("-" if value is None else f"{value:.4f}" + (
                    f" ± {stderr:.4f}" if isinstance(stderr, (int, float)) else ""))
            table.add_row(name, metric, *cells, str(entry.get("n_samples", {}).get("effective", "")))
    console.print(table)


def perplexity_table(ppl: dict, spec: str, names: dict | None = None) -> None:
    table = Table(title=f"perplexity on {spec}")
    for col in ("model", "perplexity", "tokens"):
        table.add_column(col, justify="right")
    for name in [n for n in ("dense", "unrepaired", "pruned") if n in ppl]:
        r = ppl[name]
        table.add_row((names or {}).get(name, name), f"{r['ppl']:.3f}", str(r["tokens"]))
    console.print(table)


def bench_single(data: dict) -> None:
    table = Table(title=f"{data['model']} ({data['num_layers']} layers, {data['params']:,} parameters, "
                        f"{data['dtype']} on {data['device']})")
    for col in ("workload", "tokens/s", "median s", "peak working memory", "GFLOPs"):
        table.add_column(col, justify="right")
    for w in data["workloads"]:
        mem = w["peak_memory_bytes"]
        table.add_row(w["key"], f"{w['tokens_per_s']:,.1f}", f"{w['median_s']:.4f}",
                      "-" if mem is None else f"{mem / 2**20:,.1f} MiB", f"{w['flops'] / 1e9:.3f}")
    console.print(table)
    peak = data["peak_memory_bytes"]
    console.print(f"weights {data['weights_bytes'] / 2**20:,.1f} MiB; peak memory (weights + working) "
                  f"{'-' if peak is None else f'{peak / 2**20:,.1f} MiB'} [{data['memory_method']}]")


def bench_comparison(data: dict) -> None:
    a, b = data["labels"]
    console.print(f"{a}: {data['baseline']['model']}\n{b}: {data['candidate']['model']}")
    speed = speed_table(data)
    table = Table(title=f"{b} vs {a} (ratios {b}/{a}, median of interleaved runs)")
    for col in speed.header:
        table.add_column(col, justify="right")
    for row in speed.rows:
        table.add_row(*row)
    console.print(table)
    r = data["ratios"]
    console.print(f"parameters ratio {r['params_ratio']:.3f}; layers ratio {r['layers_ratio']:.3f}")


def footer(state) -> None:
    """The read-back result and the time per stage, the last lines of every command that writes a model."""
    line = readback_line(state.readback)
    if line:
        console.print(line, highlight=False)
    if state.timings:
        console.print(timings_line(state.timings), highlight=False)


def readback_line(readback: dict | None) -> str | None:
    if not readback:
        return None
    parts = ["read back: structure ok"]
    if "logits_max_abs_diff" in readback:
        parts.append(f"logits match the pruned model with the saved weights (max diff "
                     f"{readback['logits_max_abs_diff']:.1e} on {readback['probe_tokens']} tokens; the save dtype "
                     f"itself moves them by {readback['save_dtype_effect']:.1e})")
    if "blocks" in readback:
        parts.append(f"{readback['blocks']} blocks")
    return "; ".join(parts)


def search_summary(search: dict) -> Table:
    """``prune --auto``: the candidates it measured, as the report shows them."""
    data = search_table(search)
    table = Table(title="prune --auto: candidates by validation perplexity (0-based, original numbering)")
    for col in data.header:
        table.add_column(col, justify="left" if col in ("selection", "repair", "status", "removed") else "right")
    for row in data.rows:
        style = "bold red" if row[-1] == "chosen" else None
        table.add_row(*[Text(str(c)) for c in row], style=style)
    table.caption = " ".join(data.notes)
    return table


def print_plan(plan) -> None:
    """Which executor runs the command and why the others were not used (one line each)."""
    for note in plan.notes:
        console.print(f"plan: {note}", highlight=False)


__all__ = ["bench_comparison", "bench_single", "block_table", "footer", "perplexity_table", "print_plan", "readback_line", "score_table", "task_results",
           "timings_line"]
