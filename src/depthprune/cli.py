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
                  help="Make LLMs shallower: score decoder layers, remove the least important, evaluate. "
                       "-q and --debug may go before or after the command.")


def _flags_without_type_label() -> None:
    """typer >= 0.20 labels value-less flags ``<bool>`` in help, as if they took a value: show no type for flags."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - older typer renders flags without a type already
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_depthprune", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else original(self, ctx)

    display_type_rich._depthprune = True
    TyperOption.display_type_rich = display_type_rich


_flags_without_type_label()
# markup=False, emoji=False (issue 7): no user-supplied string (paths, specs, model names) is ever read as rich markup.
# soft_wrap=True: long lines (paths) are never broken by inserted newlines.
console = Console(stderr=False, markup=False, emoji=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, emoji=False, soft_wrap=True)
STATE: dict = {"debug": False, "argv": None}


def command_line() -> str:
    """The command that is running, as a shell-quoted line (program name normalised to ``depthprune``)."""
    argv = STATE["argv"] if STATE["argv"] is not None else sys.argv[1:]
    return shlex.join(["depthprune", *argv])

ModelArg = typer.Argument(..., metavar="MODEL", help="Demo alias (smollm2-135m, gemma3-270m), .gguf file, local checkpoint dir or Hub id.")
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
StrategyOpt = typer.Option("one-shot", "--strategy", help="one-shot, iterative, block, greedy-ppl or laco (merge layers).")
LacoOpt = typer.Option(None, "--laco", help="LaCo settings for --strategy laco: C=3,L=1,H=LAST,I=1,T=0.5 (merge size, lowest/highest layer, interval, similarity threshold).")
TrustOpt = typer.Option(False, "--trust-remote-code",
                        help="Allow a model's own Python code (auto_map) to run. Off by default: such models are refused.")


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"depthprune {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
          version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Print the version and exit.")) -> None:
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
    if removed:  # the decision column only when there is a decision (prune, or score --strategy --remove)
        table.add_column("decision")
    for i, value in enumerate(scores):
        cells = [str(i), f"{value:.5f}", str(rank[i])]
        decision = [Text("removed", style="red") if i in removed else "kept"] if removed else []
        table.add_row(*cells, *decision)
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
          offload: str = typer.Option("none", "--offload", help="none (model in memory), layers (one decoder layer at a time from a safetensors dir), auto (layers when the weights do not fit in memory)."),
          activation_budget_mb: int = typer.Option(1024, "--activation-budget-mb", help="With --offload layers: activations kept in memory; the rest is spilled to disk."),
          trust_remote_code: bool = TrustOpt) -> None:
    """Score every decoder layer (Block Influence by default) and write scores.json + a bar chart.

    Under `torchrun --nproc_per_node N -m depthprune.cli score ...` each process scores its share of the
    calibration batches, the sums are all-reduced and rank 0 writes.
    """
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
                       offload=offload, activation_budget_mb=activation_budget_mb, progress=_progress(),
                       trust_remote_code=trust_remote_code)
    from .scale.distributed import is_main_process

    if not is_main_process():  # torchrun: rank 0 prints and writes
        return
    chosen = set(report.selection["removed_layers"]) if report.selection else set()
    console.print(_score_table(report.scores, chosen, report.metric))
    console.print(f"removal order (least important first): {report.removal_order}")
    if report.scale and report.scale.get("distributed"):
        d = report.scale["distributed"]
        console.print(f"{d['world_size']} processes ({d['backend']}); tokens per rank: {d['tokens_per_rank']}")
    if report.selection:
        console.print(f"{strategy} would remove layers (0-based, original numbering): "
                      f"{report.selection['removed_layers']}")
    write_json_atomic(out, report.to_json(), overwrite=overwrite)
    write_file_atomic(png, lambda p: plot_layer_scores(report.scores, p, metric=report.metric, removed=sorted(chosen),
                                                       title=f"{report.model}: {report.metric} per layer"),
                      overwrite=overwrite)
    console.print(f"wrote {out} and {png}")


# Each prune flag and the recipe field it fills: (section, field). --recipe FILE loads a recipe;
# flags given explicitly on the command line override its values.
PRUNE_FLAGS = {
    "data": ("calibration", "data"), "samples": ("calibration", "samples"), "seq_len": ("calibration", "seq_len"),
    "batch_size": ("calibration", "batch_size"), "seed": ("calibration", "seed"),
    "text_field": ("calibration", "text_field"),
    "remove": ("selection", "remove"), "ratio": ("selection", "ratio"), "layers": ("selection", "layers"),
    "metric": ("selection", "metric"), "strategy": ("selection", "strategy"),
    "protect_first": ("selection", "protect_first"), "protect_last": ("selection", "protect_last"),
    "eval_ppl": ("evaluation", "ppl"), "ppl_seq_len": ("evaluation", "ppl_seq_len"),
    "ppl_max_tokens": ("evaluation", "ppl_max_tokens"), "eval_tasks": ("evaluation", "tasks"),
    "eval_limit": ("evaluation", "limit"), "eval_num_fewshot": ("evaluation", "num_fewshot"),
    "eval_data_dir": ("evaluation", "data_dir"), "bench": ("evaluation", "bench"),
    "out": ("output", "path"), "overwrite": ("output", "overwrite"),
    "dtype": ("runtime", "dtype"), "device": ("runtime", "device"),
    "trust_remote_code": ("runtime", "trust_remote_code"), "save_dtype": ("output", "save_dtype"),
    "laco": ("selection", "laco"),  # issue 11
    "offload": ("runtime", "offload"), "activation_budget_mb": ("runtime", "activation_budget_mb"),  # scale
    "scores_file": ("selection", "scores"),
    # formats (issue 9): GGUF precision for exported models, weight-only quantization (--format: see prune)
    "gguf_type": ("output", "gguf_type"),
    "quantize": ("quantization", "method"), "quant_group_size": ("quantization", "group_size"),
}
# --- repair flags (issue 10) ---
PRUNE_FLAGS.update({
    "repair": ("repair", "methods"), "repair_objective": ("repair", "objective"), "repair_data": ("repair", "data"),
    "repair_tokens": ("repair", "tokens"), "distill": ("repair", "distill"), "repair_lr": ("repair", "lr"),
    "repair_rank": ("repair", "rank"), "repair_seq_len": ("repair", "seq_len"),
})
RepairOpt = typer.Option(None, "--repair", help="Repair after removal: linear, lora or linear,lora (off by default).")
RepairObjectiveOpt = typer.Option("lstsq", "--repair-objective", help="Linear repair objective: lstsq or cosine.")
RepairDataOpt = typer.Option(None, "--repair-data", help="Text SPEC for lora repair (keep it disjoint from --eval-ppl).")
RepairTokensOpt = typer.Option(32768, "--repair-tokens", help="LoRA training budget in tokens.")
DistillOpt = typer.Option(False, "--distill", help="LoRA: KL to the dense model's next-token distribution instead of next-token loss.")
RepairLrOpt = typer.Option(1e-3, "--repair-lr", help="LoRA learning rate.")
RepairRankOpt = typer.Option(8, "--repair-rank", help="LoRA rank.")
RepairSeqLenOpt = typer.Option(256, "--repair-seq-len", help="LoRA training window length.")


def _parse_methods(value: str | None) -> list[str]:
    return [] if value is None else _csv_list(value, "repair methods")
# --- end repair flags ---

BENCH_FLAGS = {"bench_seq_lens": "seq_lens", "bench_decode_tokens": "decode_tokens", "bench_repeats": "repeats",
               "bench_threads": "threads"}


def _parse_layers(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in _csv_list(value, "layers")]
    except ValueError:
        raise DepthpruneError(f"--layers must be comma-separated 0-based layer numbers, got '{value}'") from None


def recipe_from_flags(ctx: typer.Context, model: str | None, recipe_file: Path | None, flags: dict):
    """The Recipe a `prune` command line describes: the --recipe file (if any), overridden by explicit flags."""
    from .recipe import Recipe
    from .speed import parse_seq_lens

    recipe = Recipe.load(recipe_file) if recipe_file is not None else Recipe(model=model or "")
    if model is not None:
        recipe.model = model
    # typer vendors its own click: compare the parameter source by name, not by class
    explicit = {name for name in flags
                if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    values = dict(flags)
    values["layers"] = _parse_layers(values["layers"])
    values["repair"] = _parse_methods(values["repair"])
    values["out"] = None if values["out"] is None else str(values["out"])
    values["scores_file"] = None if values["scores_file"] is None else str(values["scores_file"])
    values["eval_data_dir"] = None if values["eval_data_dir"] is None else str(values["eval_data_dir"])
    for name, (section, field_name) in PRUNE_FLAGS.items():
        if recipe_file is None or name in explicit:
            recipe.replace(section, **{field_name: values[name]})
    if recipe_file is None or explicit & set(BENCH_FLAGS):
        options = dict(recipe.evaluation.bench_options)
        for name, key in BENCH_FLAGS.items():
            if recipe_file is None or name in explicit:
                options[key] = parse_seq_lens(values[name]) if name == "bench_seq_lens" else values[name]
        recipe.evaluation.bench_options = options
    if recipe_file is not None and "out" not in explicit:
        raise DepthpruneError("give --out DIR for the replayed recipe (a recipe never writes over its original output)")
    if recipe.selection.layers is not None and "remove" not in explicit and "ratio" not in explicit:
        recipe.selection.remove = recipe.selection.ratio = None  # --layers replaces a replayed count
    if recipe.selection.layers is None and recipe.selection.remove is None and recipe.selection.ratio is None:
        raise DepthpruneError("give --remove N, --ratio R or --layers I,J,...")
    return recipe


@app.command()
def prune(ctx: typer.Context,
          model: Optional[str] = typer.Argument(None, metavar="MODEL", help="Demo alias (smollm2-135m, gemma3-270m), .gguf file, local checkpoint dir or Hub id (optional with --recipe)."),
          out: Optional[Path] = typer.Option(None, "--out", help="Output directory for the pruned checkpoint."),
          recipe_file: Optional[Path] = typer.Option(None, "--recipe", help="Replay a recipe: a recipe JSON or a previous run's depthprune.json (or its directory); flags given here override it."),
          remove: Optional[int] = typer.Option(None, "--remove", help="Number of layers to remove."),
          ratio: Optional[float] = typer.Option(None, "--ratio", help="Share of layers to remove (floor of R x layers)."),
          layers: Optional[str] = typer.Option(None, "--layers", help="Remove exactly these 0-based layers (comma-separated); no scoring."),
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
          laco: Optional[str] = LacoOpt,
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous depthprune output directory (or an empty one)."),
          offload: str = typer.Option("none", "--offload", help="layers: never load the model (streamed scoring, pruning a safetensors checkpoint on disk); auto: only when it does not fit; none."),
          activation_budget_mb: int = typer.Option(1024, "--activation-budget-mb", help="With --offload layers: activations kept in memory while scoring."),
          scores_file: Optional[Path] = typer.Option(None, "--scores", help="Choose the --remove/--ratio layers from a scores JSON written by `depthprune score` (no scoring)."),
          repair: Optional[str] = RepairOpt, repair_objective: str = RepairObjectiveOpt,
          repair_data: Optional[str] = RepairDataOpt, repair_tokens: int = RepairTokensOpt, distill: bool = DistillOpt,
          repair_lr: float = RepairLrOpt, repair_rank: int = RepairRankOpt,
          repair_seq_len: int = RepairSeqLenOpt,
          output_format: Optional[str] = typer.Option(None, "--format", help="hf (transformers checkpoint, default) or gguf (from a GGUF source: the original quantized tensors of the kept blocks, byte for byte; default when --out ends in .gguf; from any other source: exported, see --gguf-type)."),
          gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF precision when a non-GGUF model is exported with --format gguf: f32, f16, bf16, q8_0."),
          quantize: Optional[str] = typer.Option(None, "--quantize", help="Weight-only quantization of the pruned model (torchao): int8 or int4."),
          quant_group_size: int = typer.Option(32, "--quant-group-size", help="Inputs per scale for --quantize int4."),
          save_dtype: str = typer.Option("auto", "--save-dtype", help="Dtype of the saved weights: auto (the dtype the model came in; bfloat16 for a quantized GGUF), float32, bfloat16 or float16."),
          trust_remote_code: bool = TrustOpt) -> None:
    """Remove the least important layers and save a checkpoint that reloads with plain transformers.

    The flags describe one recipe (recorded in DIR/depthprune.json); `--recipe` replays one.
    """
    from .api import run

    if model is None and recipe_file is None:  # a usage mistake: the usage line and one sentence, exit 2
        ctx.fail("Missing argument 'MODEL' (or give --recipe FILE to replay a recorded run).")
    flags = {name: value for name, value in locals().items()
             if name in PRUNE_FLAGS or name in BENCH_FLAGS}
    recipe = recipe_from_flags(ctx, model, recipe_file, flags)
    # --- GGUF output (issue 9 section 1): --format, or an --out path ending in .gguf
    if output_format is not None:
        recipe.output.format = output_format
    elif recipe.output.path is not None and recipe.output.path.lower().endswith(".gguf"):
        recipe.output.format = "gguf"
    if recipe.output.path is None:
        raise DepthpruneError("give --out DIR for the pruned checkpoint")
    recipe.validate()  # every bad value fails here, before loading the model
    result = run(recipe, in_place=True, command=command_line(), progress=_progress())
    report = result.report
    if report.scores:
        console.print(_score_table(report.scores, set(report.removed_layers), report.metric))
    console.print(f"strategy {report.strategy}, metric {report.metric}")
    if report.selection.get("order"):
        console.print(f"removal order (0-based, original numbering): {report.selection['order']}")
    console.print(f"removed layers (0-based, original numbering): {report.removed_layers}")
    console.print(f"layers {report.num_layers_before} -> {report.num_layers_after}; "
                  f"parameters {report.params_before:,} -> {report.params_after:,} "
                  f"({report.params_after / report.params_before:.1%})")
    if report.perplexity:
        table = Table(title=f"perplexity on {recipe.evaluation.ppl}")
        for col in ("model", "perplexity", "tokens"):
            table.add_column(col, justify="right")
        for name in [n for n in ("dense", "unrepaired", "pruned") if n in report.perplexity]:
            r = report.perplexity[name]
            table.add_row(name, f"{r['ppl']:.3f}", str(r["tokens"]))
        console.print(table)
    if result.evals:
        _print_task_results(result.evals, "task accuracy")
    if result.bench is not None:
        _print_comparison(result.bench.to_json())
    if recipe.output.format == "gguf":
        from .formats.gguf_prune import gguf_output_paths

        console.print(f"saved pruned GGUF to {gguf_output_paths(recipe.output.path)[0]}")
    elif report.checkpoint_bytes is not None:
        quant = f"{recipe.quantization.method} weights, " if recipe.quantization.method else ""
        console.print(f"saved pruned checkpoint to {recipe.output.path} ({quant}{report.save_dtype}, "
                      f"{report.checkpoint_bytes / 1e6:,.1f} MB of weights)")
    else:
        console.print(f"saved pruned checkpoint to {recipe.output.path}")
    if report.timings:
        console.print(_timings_line(report.timings), highlight=False)


def _timings_line(timings: dict) -> str:
    """``time: loading 3.2 s, calibration 1.0 s, ... (total 41.7 s)`` in pipeline order."""
    order = ("loading", "calibration", "scoring", "surgery", "repair", "quantization", "perplexity", "tasks", "bench",
             "save")
    names = [n for n in order if n in timings] + [n for n in timings if n not in order]
    parts = ", ".join(f"{n} {timings[n]:.1f} s" for n in names)
    return f"time: {parts} (total {sum(timings.values()):.1f} s)"


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
                                      show_default=False,  # spelled out with spaces so it wraps instead of being cut
                                      help="Comma-separated metrics [default: bi, angular, relative-magnitude, ppl, "
                                           "taylor, reverse-order, random]."),
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
          # --- issue 11: LaCo settings and lm-eval accuracy per sweep point ---
          laco: Optional[str] = LacoOpt,
          tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-eval tasks run at every point (e.g. mmlu,hellaswag): accuracy columns and a second plot panel."),
          limit: Optional[float] = typer.Option(None, "--limit", help="lm-eval documents per task (int) or share (<1); per subtask for mmlu."),
          task_data_dir: Optional[Path] = typer.Option(None, "--task-data-dir", help="Offline task data (layout in docs/lmeval-tasks.md)."),
          # --- end issue 11 ---
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
    if laco is not None:
        from .merging import LacoSettings

        LacoSettings.parse(laco)
    task_options = _eval_options(limit, None, task_data_dir, batch_size) if tasks is not None else None
    result = api_sweep(model, laco=laco, tasks=tasks, task_options=task_options,
                       metrics=metric_list, strategies=strategy_list, max_remove=max_remove, counts=count_list,
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
    for task in result.dense_tasks or {}:  # issue 11: accuracy per point, sudden drops
        acc = Table(title=f"{task} accuracy vs layers removed (dense {result.dense_tasks[task]['acc']:.3f})")
        acc.add_column("metric/strategy")
        for n in result.counts:
            acc.add_column(f"-{n}", justify="right")
        for key, pts in result.accuracy_lines(task).items():
            acc.add_row(key, *[f"{a:.3f}" for _, a, _ in pts[1:]])
        console.print(acc)
        for key, ns in result.drops()[task].items():
            if ns:
                console.print(f"sudden drop in {task} {key} at {ns} layers removed")
    save_sweep(result, out, overwrite=overwrite)
    console.print(f"wrote {out}/sweep.csv, sweep.json, sweep.png, angular_heatmap.png")


@app.command("eval")
def eval_cmd(model: str = ModelArg,
             ppl: Optional[str] = typer.Option(None, "--ppl", help="Text SPEC to measure perplexity on."),
             tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-eval tasks, comma-separated, e.g. mmlu, hellaswag, piqa, arc_easy, arc_challenge, boolq, winogrande, lambada_openai, openbookqa, cmmlu."),
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


# --- width: `depthprune heads` (issue 11) -----------------------------------------------------------

@app.command()
def heads(model: str = ModelArg, data: str = DataOpt,
          out: Path = typer.Option(..., "--out", help="Output directory: heads.json, heads.png (and model/ with --remove-per-layer)."),
          samples: int = typer.Option(16, "--samples", help="Calibration sequences (split into two disjoint halves)."),
          seq_len: int = typer.Option(128, "--seq-len", help="Tokens per calibration sequence."),
          batch_size: int = BatchOpt, seed: int = SeedOpt, text_field: str = TextFieldOpt,
          metrics: str = typer.Option("loss,oproj-norm", "--metrics", help="Head scores: loss (masked loss increase), oproj-norm."),
          units: str = typer.Option("group,query", "--units", help="group (KV group), query (query head), or both."),
          remove_per_layer: Optional[int] = typer.Option(None, "--remove-per-layer", help="Also remove the K least important units of every layer."),
          remove_unit: str = typer.Option("group", "--remove-unit", help="Unit removed by --remove-per-layer: group or query."),
          select_by: str = typer.Option("loss", "--select-by", help="Score that picks the units to remove: loss or oproj-norm."),
          ppl: Optional[str] = typer.Option(None, "--ppl", help="Text SPEC: perplexity dense vs heads removed."),
          ppl_seq_len: int = typer.Option(512, "--ppl-seq-len", help="Window length for perplexity."),
          ppl_max_tokens: int = typer.Option(4096, "--ppl-max-tokens", help="Token budget for perplexity."),
          dtype: str = DtypeOpt, device: str = DeviceOpt,
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory.")) -> None:
    """Importance of every attention head / KV group per layer, pattern statistics vs layer importance, head removal."""
    from .data import validate_spec
    from .export import check_output_dir
    from .width import remove_lowest_heads, save_heads, score_heads

    check_output_dir(out, overwrite)
    if ppl is not None:
        validate_spec(ppl, allow_self=False)
    if remove_per_layer is not None and remove_per_layer < 1:
        raise DepthpruneError(f"--remove-per-layer must be at least 1, got {remove_per_layer}")
    metric_list, unit_list = _csv_list(metrics, "metrics"), _csv_list(units, "units")
    if remove_per_layer is not None and (select_by not in metric_list or remove_unit not in unit_list):
        raise DepthpruneError(f"--select-by {select_by} --remove-unit {remove_unit} needs those scores: "
                              f"add {select_by} to --metrics and {remove_unit} to --units")
    report, loaded = score_heads(model, data=data, samples=samples, seq_len=seq_len, batch_size=batch_size, seed=seed,
                                 text_field=text_field, metrics=metric_list, units=unit_list, dtype=dtype,
                                 device=device, progress=_progress())
    table = Table(title=f"pattern statistics (two disjoint calibration halves of {samples // 2} sequences)")
    for col in ("scores", "split-half rho", "within-layer split-half rho", "neighbour-layer rho", "depth rho",
                "between-layer share"):
        table.add_column(col, justify="right")
    for key, st in report.patterns.items():
        table.add_row(key, *[f"{st[k]:.3f}" if k in st else "-" for k in (
            "split_half_spearman", "split_half_within_layer_spearman", "neighbour_layer_spearman", "depth_spearman",
            "between_layer_share")])
    console.print(table)
    removal = pruned = None
    if remove_per_layer is not None:
        removal, pruned = remove_lowest_heads(loaded.model, loaded.tokenizer, report, per_layer=remove_per_layer,
                                              unit=remove_unit, select_by=select_by, ppl=ppl, ppl_seq_len=ppl_seq_len,
                                              ppl_max_tokens=ppl_max_tokens, progress=_progress())
        kind = "removed (checkpoint in model/)" if removal.checkpoint else f"masked only: {removal.reason}"
        console.print(f"heads {kind}; {removal.parameter_share:.1%} of parameters")
        for role, r in removal.perplexity.items():
            console.print(f"perplexity {role}: {r['ppl']:.2f}")
    save_heads(report, out, removal=removal, pruned=pruned, tokenizer=loaded.tokenizer, overwrite=overwrite)
    console.print(f"wrote {out}/heads.json, heads.png" + (", model/" if pruned is not None else ""))

# --- end width ----------------------------------------------------------------------------------------


# --- depthprune repair (issue 10) ---
@app.command("repair")
def repair_cmd(pruned_dir: Path = typer.Argument(..., help="Output directory of `depthprune prune`."),
               out: Path = typer.Option(..., "--out", help="Where to write the repaired checkpoint."),
               method: str = typer.Option(..., "--method", help="linear, lora or linear,lora."),
               repair_objective: str = RepairObjectiveOpt, repair_data: Optional[str] = RepairDataOpt,
               repair_tokens: int = RepairTokensOpt, distill: bool = DistillOpt, repair_lr: float = RepairLrOpt,
               repair_rank: int = RepairRankOpt, repair_seq_len: int = RepairSeqLenOpt,
               data: Optional[str] = typer.Option(None, "--data", help="Calibration SPEC for linear repair (default: the one the prune run recorded)."),
               samples: Optional[int] = typer.Option(None, "--samples", help="Calibration sequences for linear repair (default: recorded)."),
               seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Calibration sequence length (default: recorded)."),
               seed: int = SeedOpt,
               eval_ppl: Optional[str] = typer.Option(None, "--eval-ppl", help="Text SPEC: perplexity before and after repair."),
               ppl_seq_len: int = typer.Option(512, "--ppl-seq-len", help="Window length for --eval-ppl."),
               ppl_max_tokens: int = typer.Option(40_000, "--ppl-max-tokens", help="Token budget for --eval-ppl."),
               dtype: str = DtypeOpt, device: str = DeviceOpt,
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory.")) -> None:
    """Repair an existing depthprune output (linear needs the dense model: read from its depthprune.json)."""
    from .api import repair as repair_api
    from .recipe import CalibrationRecipe, RepairRecipe
    from .repair.stage import calibration_recipe_of, read_output

    rr = RepairRecipe(methods=_parse_methods(method), objective=repair_objective, data=repair_data,
                      tokens=repair_tokens, distill=distill, lr=repair_lr, rank=repair_rank, seq_len=repair_seq_len,
                      seed=seed)
    rr.validate()
    calibration = None
    if data is not None or samples is not None or seq_len is not None:
        base = calibration_recipe_of(read_output(pruned_dir)) if data is None else CalibrationRecipe(data=data)
        calibration = CalibrationRecipe(data=data or base.data, samples=samples or base.samples,
                                        seq_len=seq_len or base.seq_len, seed=base.seed)
        calibration.validate()
    result = repair_api(pruned_dir, rr, out=out, overwrite=overwrite, calibration=calibration, eval_ppl=eval_ppl,
                        ppl_seq_len=ppl_seq_len, ppl_max_tokens=ppl_max_tokens, dtype=dtype, device=device,
                        command=command_line(), progress=_progress())
    if result.report.perplexity:
        table = Table(title=f"perplexity on {eval_ppl}")
        for col in ("model", "perplexity", "tokens"):
            table.add_column(col, justify="right")
        for name in [n for n in ("dense", "unrepaired", "pruned") if n in result.report.perplexity]:
            r = result.report.perplexity[name]
            table.add_row("repaired" if name == "pruned" and eval_ppl else name, f"{r['ppl']:.3f}", str(r["tokens"]))
        console.print(table)
    console.print(f"saved repaired checkpoint to {out}")
# --- end depthprune repair ---


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    STATE["argv"] = list(argv) if argv is not None else sys.argv[1:]
    debug = "--debug" in STATE["argv"]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _prepare_run()
    try:
        code = _run_app(STATE["argv"])
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
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: one line, traceback with --debug
        _internal_error(exc, debug)
    # ---- end issue 7 ----
    sys.exit(code)


# ---- usage errors, --version, -q/--debug placement (issue 8) -------------------------------------------------
# typer >= 0.20 vendors its own copy of click (``typer._click``) and raises *those* exception classes, which are
# not subclasses of click's; older typer raises click's. Both families are matched here. In non-standalone mode
# click/typer return the code of an ``Exit`` (``--help`` -> 0, Ctrl-C in typer -> ``Exit(130)``) instead of
# exiting, so the return value of ``app`` is the exit code.

GLOBAL_FLAGS = ("-q", "--quiet", "--debug")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Accept the global flags anywhere: ``depthprune prune ... -q`` is run as ``depthprune -q prune ...``."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]


def _exception_families() -> tuple[tuple, tuple, tuple, tuple]:
    """(NoArgsIsHelp, ClickException, Abort, Exit) classes of click and of typer's vendored click, where present."""
    import click

    no_args, errors, aborts, exits = [], [click.exceptions.ClickException], [click.exceptions.Abort], [click.exceptions.Exit]
    if hasattr(click.exceptions, "NoArgsIsHelpError"):
        no_args.append(click.exceptions.NoArgsIsHelpError)
    try:
        from typer import _click as vendored
        from typer import exceptions as typer_exceptions
    except ImportError:  # typer < 0.20 raises click's own classes
        pass
    else:
        no_args.append(vendored.exceptions.NoArgsIsHelpError)
        errors.append(vendored.exceptions.ClickException)
        aborts.extend(getattr(typer_exceptions, n) for n in ("Abort",) if hasattr(typer_exceptions, n))
        exits.extend(getattr(typer_exceptions, n) for n in ("Exit",) if hasattr(typer_exceptions, n))
    return tuple(no_args), tuple(errors), tuple(aborts), tuple(exits)


def _run_app(argv: list[str]) -> int:
    """Run the typer app; usage mistakes print the usage line and one sentence (exit 2), never a traceback.

    A bare ``depthprune`` prints the help on stdout and exits 0 (asking for help is not an error).
    """
    no_args, errors, aborts, exits = _exception_families()
    if not argv:
        argv = ["--help"]
    try:
        rv = app(args=hoist_global_flags(argv), standalone_mode=False, prog_name="depthprune")
    except no_args as exc:  # a group called without its subcommand: show the help, like a bare `depthprune`
        ctx = getattr(exc, "ctx", None)
        help_text = ctx.get_help() if ctx is not None else ""
        if help_text:
            console.print(help_text, markup=False, highlight=False)
        return 0
    except errors as exc:
        _print_usage_error(exc, argv)
        return 2
    except aborts:  # click turns Ctrl-C (and our SIGTERM exception) into Abort: main() prints the one line
        return 130
    except exits as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def _print_usage_error(exc: Exception, argv: list[str]) -> None:
    """``Usage: depthprune prune [OPTIONS] MODEL`` then ``error: <one sentence> (see 'depthprune prune --help')``."""
    message = " ".join(str(exc.format_message() if hasattr(exc, "format_message") else exc).split())
    usage, path = _usage_of(getattr(exc, "ctx", None), argv)
    if usage:
        err_console.print(usage, markup=False, highlight=False, soft_wrap=True)
    hint = f" (see '{path} --help')" if path else ""
    err_console.print(Text.assemble(("error:", "bold red"), f" {message}{hint}"), highlight=False, soft_wrap=True)


def _usage_of(ctx, argv: list[str]) -> tuple[str, str]:
    """The usage line and command path of the failing command; some errors (an option missing its value) carry
    no context, then the subcommand named in ``argv`` is looked up."""
    if ctx is None:
        try:
            group = typer.main.get_command(app)
            ctx = group.make_context("depthprune", ["--help"], resilient_parsing=True)
            name = next((a for a in argv if not a.startswith("-")), None)
            command = group.get_command(ctx, name) if name else None
            if command is not None:
                ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        except Exception:  # noqa: BLE001 - the usage line is a courtesy; the error sentence still prints
            return "", ""
    return " ".join(ctx.get_usage().split()), ctx.command_path


# ---- end of the issue-8 block ----------------------------------------------------------------------------------


# ---- issue 7: error handling helpers used by main() ----

def _prepare_run() -> None:
    from .guards.outputs import _FIRST_SEEN
    from .guards.signals import RECEIVED, install_sigterm_handler

    _FIRST_SEEN.clear()
    RECEIVED.clear()
    install_sigterm_handler()
    if "--debug" not in (STATE["argv"] or []):
        # optional libraries that transformers imports on its own (torchao: quantization) log import-time
        # noise about kernels this machine lacks; it is not the user's business unless --debug
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


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
