"""Command-line interface: parse, call the public API, print. Nothing here that the API lacks."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import DepthpruneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make LLMs shallower: score decoder layers, remove the least important, evaluate.")
# markup=False, emoji=False (issue 7): no user-supplied string (paths, specs, model names) is ever read as rich markup.
# soft_wrap=True: long lines (paths) are never broken by inserted newlines.
console = Console(stderr=False, markup=False, emoji=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, emoji=False, soft_wrap=True)
STATE: dict = {"debug": False, "argv": None}


def command_line() -> str:
    """The command that is running, as a shell-quoted line (program name normalised to ``depthprune``)."""
    argv = STATE["argv"] if STATE["argv"] is not None else sys.argv[1:]
    return shlex.join(["depthprune", *argv])

ModelArg = typer.Argument(..., help="Demo alias (smollm2-135m, gemma3-270m), .gguf file, local checkpoint dir or Hub id.")
DataOpt = typer.Option("builtin", "--data", help="Calibration SPEC: file/dir (.txt/.jsonl/.parquet), hf:NAME[:CONFIG][:SPLIT], builtin or self.")
SamplesOpt = typer.Option(128, "--samples", help="Number of calibration sequences.")
SeqLenOpt = typer.Option(512, "--seq-len", help="Tokens per calibration sequence.")
BatchOpt = typer.Option(8, "--batch-size", help="Sequences per forward pass.")
SeedOpt = typer.Option(0, "--seed", help="Seed for choosing calibration windows / generating 'self' text.")
TextFieldOpt = typer.Option("text", "--text-field", help="Field/column holding the text in .jsonl/.parquet/hf data.")
DtypeOpt = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16.")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, or auto (accelerate device_map).")
METRIC_HELP = ("Importance metric: bi, angular, angular-all, relative-magnitude, ppl, taylor, reverse-order, random.")
MetricOpt = typer.Option("bi", "--metric", help=METRIC_HELP)
PruneMetricOpt = typer.Option(None, "--metric", help=METRIC_HELP + " Default: bi (one-shot, iterative), angular (block), ppl (greedy-ppl).")
StrategyOpt = typer.Option("one-shot", "--strategy", help="one-shot, iterative, block or greedy-ppl.")
TrustOpt = typer.Option(False, "--trust-remote-code",
                        help="Allow a model's own Python code (auto_map) to run. Off by default: such models are refused.")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars.")) -> None:
    STATE["debug"] = debug
    STATE["progress"] = not quiet
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _progress() -> bool:
    return STATE.get("progress", True)


def _score_table(scores: list[float], removed: set[int], metric: str) -> Table:
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    rank = {layer: r for r, layer in enumerate(order)}
    table = Table(title=f"{metric} per layer (0-based, original numbering; rank 0 = least important)")
    table.add_column("layer", justify="right")
    table.add_column(metric, justify="right")
    table.add_column("rank", justify="right")
    table.add_column("")
    for i, value in enumerate(scores):
        table.add_row(str(i), f"{value:.5f}", str(rank[i]), Text("removed", style="red") if i in removed else "")
    return table


def _plot_path(out: Path) -> Path:
    """The bar chart written beside the scores JSON; refuse an --out that would collide with it."""
    if out.suffix.lower() == ".png":
        raise DepthpruneError(f"--out {out} names the scores JSON, and the plot goes beside it as NAME.png; "
                              "give --out a .json name")
    return out.with_suffix(".png")


def _check_side_output(path: Path, model: str, other_inputs: list, *, directory: bool = False) -> None:
    """--json/--results may go into a (pruned) model directory, but never over one of the model's own files."""
    from .export import check_output_file
    from .guards.outputs import check_not_input, local_inputs, prepare_parent, resolved

    target = resolved(path)
    for inp in local_inputs([model]):
        if inp.is_dir() and (target == inp or inp in target.parents):
            rel = target.relative_to(inp)
            ours = rel.parts and (rel.parts[0] == "eval" or rel.as_posix() == "bench.json")
            if target.exists() and not ours:
                raise DepthpruneError(f"{path} is a file of the input model {inp}; write the results elsewhere")
            check_not_input(path, other_inputs, "--json")
            prepare_parent(path)
            return
    if directory:
        check_not_input(path.parent, [model, *other_inputs], "--results")
        prepare_parent(path)
    else:
        check_output_file(path, True, inputs=[model, *other_inputs], flag="--json")


@app.command()
def score(model: str = ModelArg, data: str = DataOpt, out: Path = typer.Option(..., "--out", help="Write scores JSON here (a PNG bar chart goes beside it)."),
          metric: str = MetricOpt, samples: int = SamplesOpt, seq_len: int = SeqLenOpt, batch_size: int = BatchOpt,
          seed: int = SeedOpt, text_field: str = TextFieldOpt, dtype: str = DtypeOpt, device: str = DeviceOpt,
          strategy: Optional[str] = typer.Option(None, "--strategy", help="With --remove: preview which layers this strategy (one-shot, iterative, block, greedy-ppl) would remove."),
          remove: Optional[int] = typer.Option(None, "--remove", help="With --strategy: number of layers to preview removing."),
          protect_first: int = typer.Option(0, "--protect-first", help="Never remove the first K layers (preview)."),
          protect_last: int = typer.Option(0, "--protect-last", help="Never remove the last K layers (preview)."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
          trust_remote_code: bool = TrustOpt) -> None:
    """Score every decoder layer (Block Influence by default) and write scores.json + a bar chart."""
    from .api import score as api_score
    from .export import check_output_file, write_file_atomic, write_json_atomic
    from .plots import plot_layer_scores

    from .metrics import check_metric

    check_metric(metric)
    if (strategy is None) != (remove is None):
        raise DepthpruneError("give both --strategy and --remove to preview a selection, or neither")
    if strategy is not None:
        from .strategies import resolve

        resolve(metric, strategy)
    out = out.expanduser()
    png = _plot_path(out)
    check_output_file(out, overwrite, inputs=[model, data])
    check_output_file(png, overwrite, inputs=[model, data], flag="--out (its plot)")
    report = api_score(model, data=data, metric=metric, samples=samples, seq_len=seq_len, batch_size=batch_size,
                       seed=seed, text_field=text_field, strategy=strategy, remove=remove,
                       protect_first=protect_first, protect_last=protect_last, dtype=dtype, device=device,
                       progress=_progress(), trust_remote_code=trust_remote_code)
    chosen = set(report.selection["removed_layers"]) if report.selection else set()
    console.print(_score_table(report.scores, chosen, report.metric))
    console.print(f"removal order (least important first): {report.removal_order}")
    if report.selection:
        console.print(f"{strategy} would remove layers (0-based, original numbering): "
                      f"{report.selection['removed_layers']}")
    write_json_atomic(out, report.to_json(), overwrite=overwrite)
    write_file_atomic(png, lambda p: plot_layer_scores(report.scores, p, metric=report.metric, removed=sorted(chosen),
                                                       title=f"{report.model}: {report.metric} per layer"),
                      overwrite=overwrite)
    console.print(f"wrote {out} and {png}")


@app.command()
def prune(model: str = ModelArg,
          out: Path = typer.Option(..., "--out", help="Output directory for the pruned checkpoint."),
          remove: Optional[int] = typer.Option(None, "--remove", help="Number of layers to remove."),
          ratio: Optional[float] = typer.Option(None, "--ratio", help="Share of layers to remove (floor of R x layers)."),
          data: str = DataOpt, metric: Optional[str] = PruneMetricOpt, strategy: str = StrategyOpt,
          samples: int = SamplesOpt, seq_len: int = SeqLenOpt,
          batch_size: int = BatchOpt, seed: int = SeedOpt, text_field: str = TextFieldOpt,
          protect_first: int = typer.Option(0, "--protect-first", help="Never remove the first K layers."),
          protect_last: int = typer.Option(0, "--protect-last", help="Never remove the last K layers."),
          eval_ppl: Optional[str] = typer.Option(None, "--eval-ppl", help="Text SPEC: perplexity of dense and pruned model, side by side."),
          ppl_seq_len: int = typer.Option(512, "--ppl-seq-len", help="Window length for --eval-ppl."),
          ppl_max_tokens: int = typer.Option(40_000, "--ppl-max-tokens", help="Token budget for --eval-ppl."),
          dtype: str = DtypeOpt, device: str = DeviceOpt,
          bench: bool = typer.Option(False, "--bench", help="Also measure dense vs pruned speed side by side; writes bench.json."),
          bench_seq_lens: str = typer.Option("128,512", "--bench-seq-lens", help="Prefill lengths for --bench."),
          bench_decode_tokens: int = typer.Option(32, "--bench-decode-tokens", help="Decode steps for --bench."),
          bench_repeats: int = typer.Option(5, "--bench-repeats", help="Timed repetitions per model for --bench."),
          bench_threads: Optional[int] = typer.Option(None, "--bench-threads", help="torch CPU threads for --bench (default: torch's)."),
          eval_tasks: Optional[str] = typer.Option(None, "--eval-tasks", help="lm-eval tasks for dense and pruned, side by side (saved in DIR/eval/)."),
          eval_limit: Optional[float] = typer.Option(None, "--eval-limit", help="lm-eval documents per task (int) or share (<1)."),
          eval_num_fewshot: Optional[int] = typer.Option(None, "--eval-num-fewshot", help="lm-eval few-shot examples."),
          eval_data_dir: Optional[Path] = typer.Option(None, "--eval-data-dir", help="Offline task data (layout in docs/lmeval-tasks.md)."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous depthprune output directory (or an empty one)."),
          trust_remote_code: bool = TrustOpt) -> None:
    """Remove the least important layers and save a checkpoint that reloads with plain transformers."""
    from .api import prune as api_prune
    from .export import check_output_dir
    from .speed import parse_seq_lens

    from .strategies import resolve

    check_output_dir(out, overwrite, inputs=[model, data, eval_ppl, eval_data_dir])
    if remove is None and ratio is None:
        raise DepthpruneError("give --remove N or --ratio R")
    resolve(metric, strategy)  # a bad metric/strategy combination fails before loading the model
    bench_options = {"seq_lens": parse_seq_lens(bench_seq_lens), "decode_tokens": bench_decode_tokens,
                     "repeats": bench_repeats, "threads": bench_threads}
    result = api_prune(model, remove=remove, ratio=ratio, data=data, metric=metric, strategy=strategy, samples=samples,
                       seq_len=seq_len, batch_size=batch_size, seed=seed, text_field=text_field,
                       protect_first=protect_first, protect_last=protect_last, eval_ppl=eval_ppl,
                       ppl_seq_len=ppl_seq_len, ppl_max_tokens=ppl_max_tokens, dtype=dtype, device=device,
                       in_place=True, bench=bench, bench_options=bench_options, command=command_line(),
                       eval_tasks=eval_tasks, eval_options=_eval_options(eval_limit, eval_num_fewshot, eval_data_dir,
                                                                         batch_size),
                       progress=_progress(), trust_remote_code=trust_remote_code)
    report = result.report
    console.print(_score_table(report.scores, set(report.removed_layers), report.metric))
    console.print(f"strategy {report.strategy}, metric {report.metric}")
    if report.selection.get("order"):
        console.print(f"removal order (0-based, original numbering): {report.selection['order']}")
    console.print(f"removed layers (0-based, original numbering): {report.removed_layers}")
    console.print(f"layers {report.num_layers_before} -> {report.num_layers_after}; "
                  f"parameters {report.params_before:,} -> {report.params_after:,} "
                  f"({report.params_after / report.params_before:.1%})")
    if report.perplexity:
        table = Table(title=f"perplexity on {eval_ppl}")
        for col in ("model", "perplexity", "tokens"):
            table.add_column(col, justify="right")
        for name in ("dense", "pruned"):
            r = report.perplexity[name]
            table.add_row(name, f"{r['ppl']:.3f}", str(r["tokens"]))
        console.print(table)
    if result.evals:
        _print_task_results(result.evals, "task accuracy")
    if result.bench is not None:
        _print_comparison(result.bench.to_json())
    result.save(out, overwrite=overwrite)
    console.print(f"saved pruned checkpoint to {out}")


def _print_task_results(by_role: dict, title: str) -> None:
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


def _eval_options(limit: float | None, num_fewshot: int | None, data_dir: Path | None, batch_size: int) -> dict:
    if limit is not None and limit >= 1:
        limit = int(limit)
    return {"limit": limit, "num_fewshot": num_fewshot, "data_dir": str(data_dir) if data_dir else None,
            "batch_size": batch_size}


def _csv_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise DepthpruneError(f"--{what} needs at least one name (comma-separated)")
    return items


@app.command()
def sweep(model: str = ModelArg,
          out: Path = typer.Option(..., "--out", help="Output directory: sweep.csv, sweep.json, sweep.png, angular_heatmap.png."),
          ppl: str = typer.Option(..., "--ppl", help="Text SPEC to measure perplexity on."),
          metrics: str = typer.Option("bi,angular,relative-magnitude,ppl,taylor,reverse-order,random", "--metrics",
                                      help="Comma-separated metrics."),
          strategies: str = typer.Option("one-shot", "--strategies",
                                         help="Comma-separated strategies: one-shot, iterative, block, greedy-ppl."),
          max_remove: Optional[int] = typer.Option(None, "--max-remove", help="Remove 1..N layers."),
          counts: Optional[str] = typer.Option(None, "--counts", help="Instead of --max-remove: comma-separated layer counts."),
          data: str = DataOpt, samples: int = typer.Option(32, "--samples", help="Number of calibration sequences."),
          seq_len: int = typer.Option(256, "--seq-len", help="Tokens per calibration sequence."),
          batch_size: int = BatchOpt, seed: int = SeedOpt, text_field: str = TextFieldOpt,
          ppl_seq_len: int = typer.Option(512, "--ppl-seq-len", help="Window length for perplexity."),
          ppl_max_tokens: int = typer.Option(16_384, "--ppl-max-tokens", help="Token budget for perplexity."),
          protect_first: int = typer.Option(0, "--protect-first", help="Never remove the first K layers."),
          protect_last: int = typer.Option(0, "--protect-last", help="Never remove the last K layers."),
          dtype: str = DtypeOpt, device: str = DeviceOpt,
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous depthprune output directory (or an empty one)."),
          trust_remote_code: bool = TrustOpt) -> None:
    """Perplexity vs layers removed for each metric/strategy (CSV, JSON, line plot, angular heatmap)."""
    from .export import check_output_dir
    from .sweep import combinations, save_sweep
    from .sweep import sweep as api_sweep

    check_output_dir(out, overwrite, inputs=[model, data, ppl])
    metric_list, strategy_list = _csv_list(metrics, "metrics"), _csv_list(strategies, "strategies")
    combinations(metric_list, strategy_list)
    count_list = None
    if counts is not None:
        try:
            count_list = [int(c) for c in _csv_list(counts, "counts")]
        except ValueError:
            raise DepthpruneError(f"--counts must be comma-separated whole numbers, got '{counts}'") from None
    result = api_sweep(model, metrics=metric_list, strategies=strategy_list, max_remove=max_remove, counts=count_list,
                       data=data, ppl=ppl, samples=samples, seq_len=seq_len, batch_size=batch_size, seed=seed,
                       text_field=text_field, ppl_seq_len=ppl_seq_len, ppl_max_tokens=ppl_max_tokens,
                       protect_first=protect_first, protect_last=protect_last, dtype=dtype, device=device,
                       progress=_progress(), trust_remote_code=trust_remote_code)
    table = Table(title=f"perplexity on {ppl} vs layers removed (dense {result.dense['ppl']:.2f})")
    lines = result.lines()
    table.add_column("metric/strategy")
    for n in result.counts:
        table.add_column(f"-{n}", justify="right")
    for key, pts in lines.items():
        table.add_row(key, *[f"{v:.2f}" for _, v in pts[1:]])
    console.print(table)
    for note in result.skipped:
        console.print(f"skipped {note}")
    save_sweep(result, out, overwrite=overwrite)
    console.print(f"wrote {out}/sweep.csv, sweep.json, sweep.png, angular_heatmap.png")


@app.command("eval")
def eval_cmd(model: str = ModelArg,
             ppl: Optional[str] = typer.Option(None, "--ppl", help="Text SPEC to measure perplexity on."),
             tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-eval tasks, comma-separated (mmlu,hellaswag,piqa,arc_easy,arc_challenge,boolq,winogrande,lambada_openai,openbookqa,cmmlu)."),
             limit: Optional[float] = typer.Option(None, "--limit", help="lm-eval: documents per task (int) or share (<1) for quick runs."),
             num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="lm-eval: few-shot examples."),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Offline: local copies of the task data (layout in docs/lmeval-tasks.md)."),
             results: Optional[Path] = typer.Option(None, "--results", help="Where to write the task results JSON (default: MODEL/eval/ for a local directory, else ./eval-results/)."),
             role: Optional[str] = typer.Option(None, "--role", help="dense or pruned, recorded for `depthprune report` (default: pruned if MODEL has depthprune.json)."),
             seq_len: int = typer.Option(512, "--seq-len", help="Perplexity window length."),
             max_tokens: int = typer.Option(40_000, "--max-tokens", help="Perplexity token budget."),
             batch_size: int = typer.Option(1, "--batch-size", help="Windows (ppl) or requests (lm-eval) per forward pass."),
             text_field: str = TextFieldOpt, dtype: str = DtypeOpt, device: str = DeviceOpt,
             json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the perplexity result as JSON here."),
             trust_remote_code: bool = TrustOpt) -> None:
    """Perplexity on a text SPEC and/or task accuracy through lm-evaluation-harness (dense or pruned model)."""
    from .api import as_loaded, evaluate_perplexity
    from .evaluation import check_tasks, evaluate_tasks, parse_tasks
    from .export import write_json_atomic

    if ppl is None and tasks is None:
        raise DepthpruneError("give --ppl SPEC and/or --tasks NAMES")
    if role is not None and role not in ("dense", "pruned"):
        raise DepthpruneError(f"--role must be dense or pruned, got '{role}'")
    if tasks is not None:
        check_tasks(tasks, str(data_dir) if data_dir else None)
    local_dir = Path(model).expanduser()
    is_dir = local_dir.is_dir()
    results_dir = results or (local_dir / "eval" if is_dir else Path("eval-results"))
    if json_out is not None:
        _check_side_output(json_out, model, [ppl])
    if tasks is not None:
        _check_side_output(results_dir / "x.json", model, [ppl], directory=True)
    loaded = as_loaded(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if ppl is not None:
        from .guards.settings import check_batch_size

        check_batch_size(batch_size)
    if ppl is not None:
        result = evaluate_perplexity(loaded, spec=ppl, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size,
                                     text_field=text_field, progress=_progress())
        console.print(f"perplexity {result.ppl:.3f} over {result.tokens} tokens ({ppl}, windows of {seq_len})")
        if json_out is not None:
            write_json_atomic(json_out, {"model": model, **result.to_json()})
    if tasks is not None:
        if role is None:
            role = "pruned" if is_dir and (local_dir / "depthprune.json").is_file() else "dense"
        out = evaluate_tasks(loaded.model, loaded.tokenizer, tasks, device=None, model_name=model, role=role,
                             command=command_line(), trust_remote_code=trust_remote_code,
                             **_eval_options(limit, num_fewshot, data_dir, batch_size))
        _print_task_results({role: out}, f"lm-eval on {model}")
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{role}-{'_'.join(parse_tasks(tasks))}.json"
        if len(path.name) > 120:
            path = results_dir / f"{role}-{len(out['tasks'])}tasks.json"
        write_json_atomic(path, out)
        console.print(f"wrote {path}")


def _print_bench(data: dict) -> None:
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


def _print_comparison(data: dict) -> None:
    from .summary import speed_table

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


@app.command()
def bench(model: str = ModelArg,
          compare_with: Optional[str] = typer.Option(None, "--compare", help="Baseline (e.g. the dense model) measured side by side in the same run; ratios are MODEL / BASELINE."),
          seq_lens: str = typer.Option("128,512", "--seq-lens", help="Prefill lengths, comma-separated ('' for none)."),
          decode_tokens: int = typer.Option(32, "--decode-tokens", help="Greedy decode steps with KV cache (0: no decode)."),
          prompt_len: int = typer.Option(128, "--prompt-len", help="Prompt length before decoding."),
          batch_size: int = typer.Option(1, "--batch-size", help="Sequences per forward pass."),
          repeats: int = typer.Option(5, "--repeats", help="Timed repetitions per model and workload (median reported)."),
          warmup: int = typer.Option(1, "--warmup", help="Untimed warm-up runs per model and workload."),
          labels: str = typer.Option("dense,pruned", "--labels", help="Names for BASELINE,MODEL in tables."),
          threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch during the measurement (default: torch's)."),
          dtype: str = DtypeOpt, device: str = DeviceOpt,
          json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here (e.g. PRUNED_DIR/bench.json for `report`)."),
          trust_remote_code: bool = TrustOpt) -> None:
    """Prefill/decode throughput, peak memory and size of a model, optionally side by side with a baseline."""
    from .export import write_json_atomic
    from .speed import benchmark, compare, parse_seq_lens

    lens = parse_seq_lens(seq_lens)
    options = dict(seq_lens=lens, prompt_len=prompt_len, decode_tokens=decode_tokens, batch_size=batch_size,
                   repeats=repeats, warmup=warmup, dtype=dtype, device=device, threads=threads,
                   progress=_progress(), trust_remote_code=trust_remote_code)
    if json_out is not None:
        _check_side_output(json_out, model, [compare_with])
    if compare_with is None:
        data = benchmark(model, **options).to_json()
        data["command"] = command_line()
        _print_bench(data)
    else:
        names = [x.strip() for x in labels.split(",")]
        if len(names) != 2 or not all(names):
            raise DepthpruneError(f"--labels needs two comma-separated names like dense,pruned, not '{labels}'")
        result = compare(compare_with, model, labels=(names[0], names[1]), names=(compare_with, model), **options)
        result.command = command_line()
        data = result.to_json()
        _print_comparison(data)
    if json_out is not None:
        write_json_atomic(json_out, data)
        console.print(f"wrote {json_out}")


@app.command()
def report(directory: Path = typer.Argument(..., help="Output directory of `depthprune prune` (reads depthprune.json, eval/*.json, bench.json).")) -> None:
    """Write report.md and a self-contained report.html for a pruned model directory; refresh its README.md."""
    from .report import write_report

    paths = write_report(directory)
    console.print(f"wrote {paths.markdown}, {paths.html} and refreshed {paths.model_card}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    STATE["argv"] = list(argv) if argv is not None else sys.argv[1:]
    debug = "--debug" in STATE["argv"]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _prepare_run()
    try:
        code = app(args=argv, standalone_mode=False)
        if code == 130:  # issue 7: typer turns Ctrl-C (and our SIGTERM exception) into a returned 130
            _interrupted(None, debug)
    # ---- issue 7: user errors, interrupts, errors escaping from files (keep this block together) ----
    except DepthpruneError as exc:
        _refuse(str(exc), debug)
    except KeyboardInterrupt as exc:
        _interrupted(exc, debug)
    except (OSError, UnicodeError, ValueError, RuntimeError) as exc:
        sentence = _file_error_sentence(exc)
        if sentence is None:
            _internal_error(exc, debug)
        _refuse(sentence, debug)
    # ---- end issue 7 ----
    except Exception as exc:  # click usage errors come here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            cause = exc.__cause__ or exc.__context__  # issue 7: click turns Ctrl-C (and SIGTERM) into Abort
            _interrupted(cause if isinstance(cause, KeyboardInterrupt) else KeyboardInterrupt(), debug)
        _internal_error(exc, debug)  # issue 7
    sys.exit(0)


# ---- issue 7: error handling helpers used by main() ----

def _prepare_run() -> None:
    from .guards.outputs import _FIRST_SEEN
    from .guards.signals import RECEIVED, install_sigterm_handler

    _FIRST_SEEN.clear()
    RECEIVED.clear()
    install_sigterm_handler()


def _refuse(sentence: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    err_console.print(Text.assemble(("error:", "bold red"), f" {sentence}"), highlight=False, soft_wrap=True)
    sys.exit(2)


def _interrupted(exc: BaseException | None, debug: bool) -> None:
    import signal

    from .guards.signals import RECEIVED, Terminated

    if debug and exc is not None:
        traceback.print_exc()
    terminated = isinstance(exc, Terminated) or signal.SIGTERM in RECEIVED
    err_console.print(f"{'terminated' if terminated else 'interrupted'}; no partial output was left behind",
                      highlight=False, soft_wrap=True)
    sys.exit(143 if terminated else 130)


def _file_error_sentence(exc: BaseException) -> str | None:
    """One sentence for an OS/decoding error that names a file; None for anything that looks like a bug."""
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        what = exc.strerror or type(exc).__name__
        return f"cannot access {exc.filename}: {what}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"input/output error: {exc.strerror or exc}"
    return None


def _internal_error(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    err_console.print(f"internal error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
                      highlight=False, soft_wrap=True)
    sys.exit(1)

# ---- end issue 7 helpers ----


if __name__ == "__main__":  # pragma: no cover
    main()
