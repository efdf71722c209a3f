"""Command-line interface: parse, call the public API, print. Nothing here that the API lacks."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import DepthpruneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make LLMs shallower: score decoder layers, remove the least important, evaluate.")
console = Console(stderr=False)
err_console = Console(stderr=True)
STATE = {"debug": False}

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


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars.")) -> None:
    STATE["debug"] = debug
    STATE["progress"] = not quiet
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
        table.add_row(str(i), f"{value:.5f}", str(rank[i]), "[red]removed[/red]" if i in removed else "")
    return table


@app.command()
def score(model: str = ModelArg, data: str = DataOpt, out: Path = typer.Option(..., "--out", help="Write scores JSON here (a PNG bar chart goes beside it)."),
          metric: str = MetricOpt, samples: int = SamplesOpt, seq_len: int = SeqLenOpt, batch_size: int = BatchOpt,
          seed: int = SeedOpt, text_field: str = TextFieldOpt, dtype: str = DtypeOpt, device: str = DeviceOpt,
          strategy: Optional[str] = typer.Option(None, "--strategy", help="With --remove: preview which layers this strategy (one-shot, iterative, block, greedy-ppl) would remove."),
          remove: Optional[int] = typer.Option(None, "--remove", help="With --strategy: number of layers to preview removing."),
          protect_first: int = typer.Option(0, "--protect-first", help="Never remove the first K layers (preview)."),
          protect_last: int = typer.Option(0, "--protect-last", help="Never remove the last K layers (preview)."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file.")) -> None:
    """Score every decoder layer (Block Influence by default) and write scores.json + a bar chart."""
    from .api import score as api_score
    from .export import write_file_atomic, write_json_atomic
    from .plots import plot_layer_scores

    from .metrics import check_metric

    check_metric(metric)
    if (strategy is None) != (remove is None):
        raise DepthpruneError("give both --strategy and --remove to preview a selection, or neither")
    if strategy is not None:
        from .strategies import resolve

        resolve(metric, strategy)
    out = out.expanduser()
    if out.exists() and not overwrite:
        raise DepthpruneError(f"output file {out} already exists; choose another --out or pass --overwrite")
    if not out.parent.exists():
        raise DepthpruneError(f"directory {out.parent} for --out does not exist")
    report = api_score(model, data=data, metric=metric, samples=samples, seq_len=seq_len, batch_size=batch_size,
                       seed=seed, text_field=text_field, strategy=strategy, remove=remove,
                       protect_first=protect_first, protect_last=protect_last, dtype=dtype, device=device,
                       progress=_progress())
    chosen = set(report.selection["removed_layers"]) if report.selection else set()
    console.print(_score_table(report.scores, chosen, report.metric))
    console.print(f"removal order (least important first): {report.removal_order}")
    if report.selection:
        console.print(f"{strategy} would remove layers (0-based, original numbering): "
                      f"{report.selection['removed_layers']}")
    write_json_atomic(out, report.to_json())
    png = out.with_suffix(".png")
    write_file_atomic(png, lambda p: plot_layer_scores(report.scores, p, metric=report.metric, removed=sorted(chosen),
                                                       title=f"{report.model}: {report.metric} per layer"))
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
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory.")) -> None:
    """Remove the least important layers and save a checkpoint that reloads with plain transformers."""
    from .api import prune as api_prune
    from .export import check_output_dir

    from .strategies import resolve

    check_output_dir(out, overwrite)
    if remove is None and ratio is None:
        raise DepthpruneError("give --remove N or --ratio R")
    resolve(metric, strategy)  # a bad metric/strategy combination fails before loading the model
    result = api_prune(model, remove=remove, ratio=ratio, data=data, metric=metric, strategy=strategy, samples=samples,
                       seq_len=seq_len, batch_size=batch_size, seed=seed, text_field=text_field,
                       protect_first=protect_first, protect_last=protect_last, eval_ppl=eval_ppl,
                       ppl_seq_len=ppl_seq_len, ppl_max_tokens=ppl_max_tokens, dtype=dtype, device=device,
                       in_place=True, progress=_progress())
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
    result.save(out, overwrite=overwrite)
    console.print(f"saved pruned checkpoint to {out}")


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
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory.")) -> None:
    """Perplexity vs layers removed for each metric/strategy (CSV, JSON, line plot, angular heatmap)."""
    from .export import check_output_dir
    from .sweep import combinations, save_sweep
    from .sweep import sweep as api_sweep

    check_output_dir(out, overwrite)
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
                       progress=_progress())
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
             ppl: str = typer.Option(..., "--ppl", help="Text SPEC to measure perplexity on."),
             seq_len: int = typer.Option(512, "--seq-len", help="Window length."),
             max_tokens: int = typer.Option(40_000, "--max-tokens", help="Token budget."),
             batch_size: int = typer.Option(1, "--batch-size", help="Windows per forward pass."),
             text_field: str = TextFieldOpt, dtype: str = DtypeOpt, device: str = DeviceOpt,
             json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here.")) -> None:
    """Perplexity of a model (dense or pruned) on a text SPEC."""
    from .api import evaluate_perplexity
    from .export import write_json_atomic

    result = evaluate_perplexity(model, spec=ppl, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size,
                                 text_field=text_field, dtype=dtype, device=device, progress=_progress())
    console.print(f"perplexity {result.ppl:.3f} over {result.tokens} tokens ({ppl}, windows of {seq_len})")
    if json_out is not None:
        write_json_atomic(json_out, {"model": model, **result.to_json()})


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, standalone_mode=False)
    except DepthpruneError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; no output was left behind")
        sys.exit(130)
    except Exception as exc:  # click usage errors come here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
