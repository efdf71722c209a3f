"""The write stages: every command's files, through the one writer, read back before they are committed.

Each output was declared and checked by the planner (:func:`depthprune.pipeline.plan.plan`); here it is written
in one :func:`depthprune.io.writer.transaction`. A checkpoint or GGUF file is read back inside the transaction
(:mod:`depthprune.io.readback`), so an output that would load wrong is never committed: the staged files are
removed and the run ends with one sentence naming the cause. The record (``depthprune.json``, ``sweep.json``,
...) is written last, with the timings of the save and of the read-back.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from depthprune.io.formats.gguf_export import export_gguf
from depthprune.io.formats.hf import resolve_save_dtype, save_checkpoint
from depthprune.io.gguf import read_header as read_gguf_header
from depthprune.io.readback import check_checkpoint, check_gguf, check_tensors
from depthprune.io.writer import OutputSpec, Staging, transaction, weights_bytes
from depthprune.pipeline.state import RunState, source_info
from depthprune.reporting.card import model_card
from depthprune.reporting.head_plots import plot_head_heatmaps
from depthprune.reporting.plots import plot_layer_scores, plot_search
from depthprune.reporting.records import PruneReport, ScoreReport
from depthprune.reporting.sweep_files import render_sweep
from depthprune.reporting.report import load as load_report_inputs, read_evals, render_report
from depthprune.surgery.gguf_cut import cut_gguf, gguf_output_paths
from depthprune.surgery.on_disk import cut_checkpoint

log = logging.getLogger(__name__)


def _spec(state: RunState, index: int = 0) -> OutputSpec:
    return state.plan.outputs[index]


class _Timed:
    """A transaction whose wall time (saving and reading back) is recorded as ``save``."""

    def __init__(self, state: RunState, spec: OutputSpec):
        self.state, self.spec = state, spec

    def __enter__(self) -> Staging:
        self.started = time.perf_counter()
        self.state.extra["save_started"] = self.started
        self.cm = transaction(self.spec, self.state.plan.inputs)
        return self.cm.__enter__()

    def __exit__(self, *exc):
        try:
            return self.cm.__exit__(*exc)
        finally:
            self.state.timings["save"] = round(self.state.timings.get("save", 0.0)
                                               + time.perf_counter() - self.started, 3)
            self.state.written.extend(self.spec.targets if exc[0] is None else [])


# --------------------------------------------------------------------------------------------- prune records


def timings_so_far(state: RunState) -> dict:
    """The stage timings with ``save`` up to now (the record is the last file written, inside the save)."""
    started = state.extra.get("save_started")
    timings = dict(state.timings)
    if started is not None:
        timings["save"] = round(timings.get("save", 0.0) + time.perf_counter() - started, 3)
    return timings


def model_name(state: RunState) -> str:
    """The model as the record names it: a demo alias or Hub id as given; a local path made absolute."""
    src = state.plan.source
    if src.kind in ("local", "gguf") and src.path is not None:
        return str(src.path)
    if state.loaded is not None and src.kind == "in-memory":
        return state.loaded.source
    return state.recipe.model


def prune_record(state: RunState) -> PruneReport:
    rec, plan = state.recipe, state.plan
    total = state.num_layers
    removed = sorted(state.removed)
    scores = list(state.scores.scores) if state.scores is not None else []
    calibration = dict(state.calibration.settings) if state.calibration is not None else \
        dict(state.details.pop("scores_calibration", {}) or {})
    model = state.model
    model_type = plan.source.model_type or (getattr(model.config, "model_type", None) if model is not None else None)
    strategy = "given" if rec.selection.layers is not None else rec.selection.strategy
    metric = plan.metric or "given"
    if rec.search.auto:
        strategy, metric = "auto", state.extra["metric"]
    return PruneReport(
        model=model_name(state), model_type=model_type, metric=metric, strategy=strategy,
        removed_layers=removed, kept_layers=[i for i in range(total) if i not in set(removed)],
        num_layers_before=total, num_layers_after=total - len(removed), params_before=state.params_before or 0,
        params_after=state.extra.get("params_after", 0), scores=scores, calibration=calibration,
        protect_first=rec.selection.protect_first, protect_last=rec.selection.protect_last,
        perplexity=dict(state.perplexity), selection={"order": state.order, **state.details},
        command=state.command_line, recipe=rec.to_json(), repair=state.repair, source=source_info(state),
        timings=state.timings, executor=plan.executor, scale=state.scale, search=state.extra.get("search"))


def _evidence(staging: Staging, root: Path, state: RunState) -> dict | None:
    """bench.json and eval/{role}.json of a directory output; returns the bench comparison as JSON."""
    bench = state.bench.to_json() if state.bench is not None else None
    if bench is not None:
        staging.write_json(root / "bench.json", bench)
    for role, result in (state.evals or {}).items():
        staging.write_json(root / "eval" / f"{role}.json", result)
    return bench


def _card_evals(staged: Path, record: dict) -> dict | None:
    return read_evals(staged, record)[0] if (staged / "eval").is_dir() else None


def _plot_scores(path: Path, record: dict) -> None:
    if record.get("search"):
        plot_search(record["search"], path.with_name("search.png"),
                    title=f"{record['model']}: prune --auto, validation perplexity")
    if record.get("scores"):
        plot_layer_scores(record["scores"], path, removed=record["removed_layers"], metric=record["metric"],
                          title=f"{record['model']}: {record['metric']} per layer (red = removed)")


def write_prune_checkpoint(state: RunState) -> None:
    """A pruned model in memory, saved as a Hugging Face checkpoint (quantized weights as they are)."""
    rec = state.recipe
    pruned = state.pruned
    state.extra["params_after"] = sum(p.numel() for p in pruned.parameters())
    report = prune_record(state)
    quantized = rec.quantization.method is not None
    dtype_name = resolve_save_dtype("auto" if quantized else rec.output.save_dtype,
                                    report.source.get("source_dtype"), pruned)
    if quantized:  # the quantize stage chose the dtype of the tensors it left unquantized
        dtype_name = state.extra["quantized_dtype"]
    state.report = report
    if not state.plan.outputs:
        return  # the Python API: the result stays in memory until PruneResult.save
    spec = _spec(state)
    with _Timed(state, spec) as staging:
        root = staging.location
        save_checkpoint(pruned, state.tokenizer, root, dtype_name, quantized=quantized)
        report.save_dtype = dtype_name
        report.checkpoint_bytes = weights_bytes(root)
        started = time.perf_counter()
        state.readback = check_checkpoint(root, model=pruned, saved_dtype=dtype_name, quantized=quantized,
                                          trust_remote_code=rec.runtime.trust_remote_code)
        state.readback["seconds"] = round(time.perf_counter() - started, 3)
        report.readback = state.readback
        bench = _evidence(staging, root, state)
        record = report.to_json()
        _plot_scores(root / "layer_scores.png", record)
        staging.write_text(root / "README.md", model_card(record, evals=_card_evals(root, record), bench=bench))
        report.timings = timings_so_far(state)
        staging.write_record(report.to_json())
    state.report = report


def write_prune_gguf(state: RunState) -> None:
    """A GGUF output: the source GGUF's kept blocks byte for byte (gguf-cut), or the pruned model exported."""
    rec, plan = state.recipe, state.plan
    if state.pruned is not None:
        state.extra["params_after"] = sum(p.numel() for p in state.pruned.parameters())
    report = prune_record(state)
    state.report = report
    spec = _spec(state)
    with _Timed(state, spec) as staging:
        directory = spec.kind == "directory"
        target = spec.path / "model.gguf" if directory else gguf_output_paths(spec.path)[0]
        staged = staging.path(target)
        started = time.perf_counter()
        if plan.executor == "gguf-cut":
            cut = cut_gguf(plan.source.gguf, report.removed_layers, staged)
            cut.output = str(target)
            gguf = cut.to_json()
            per_layer = tuple(cut.per_layer_keys)
            if state.pruned is None:  # no model in memory: parameters counted from the two files' tensor tables
                report.params_before = _gguf_elements(plan.source.gguf)
                report.params_after = _gguf_elements(staged)
        else:
            name = f"{report.model} minus layers {report.removed_layers}"
            written = export_gguf(state.pruned, state.tokenizer, staged, gguf_type=rec.output.gguf_type, name=name)
            written.path = str(target)
            gguf = written.to_json()
            per_layer = ()
        state.readback = check_gguf(staged, expected_blocks=report.num_layers_after, per_layer_keys=per_layer)
        state.readback["seconds"] = round(time.perf_counter() - started, 3)
        report.readback = state.readback
        report.checkpoint_bytes = staged.stat().st_size
        report.save_dtype = rec.output.gguf_type if plan.executor != "gguf-cut" else "gguf (source tensor types)"
        record = {**report.to_json(), "gguf": gguf}
        if directory:
            bench = _evidence(staging, spec.path, state)
            _plot_scores(staging.path(spec.path / "layer_scores.png"), record)
            staging.write_text(spec.path / "README.md",
                               model_card(record, evals=_card_evals(staging.location, record), bench=bench, gguf=gguf))
        elif state.bench is not None or state.evals:
            record["bench"] = state.bench.to_json() if state.bench is not None else None
            record["evals"] = state.evals
        record["timings"] = timings_so_far(state)
        staging.write_record(record)
    state.report = report


def _gguf_elements(path: Path) -> int:
    total = 0
    for tensor in read_gguf_header(path).tensors:
        n = 1
        for d in tensor.dims:
            n *= int(d)
        total += n
    return total


def write_prune_on_disk(state: RunState) -> None:
    """The checkpoint's kept tensors copied byte for byte (on-disk and layer-streamed executors)."""
    rec, plan = state.recipe, state.plan
    spec = _spec(state)
    with _Timed(state, spec) as staging:
        root = staging.location
        replacements = state.extra.get("replacements") or {}
        cut = cut_checkpoint(plan.source.path, state.removed, root, trust_remote_code=rec.runtime.trust_remote_code,
                             replacements=replacements)
        state.num_layers = cut.num_layers_before
        state.params_before = cut.params_before
        state.extra["params_after"] = cut.params_after
        report = prune_record(state)
        report.save_dtype = plan.source.source_dtype
        report.checkpoint_bytes = cut.bytes_written
        started = time.perf_counter()
        state.readback = check_checkpoint(root, trust_remote_code=rec.runtime.trust_remote_code)
        if cut.replaced:
            state.readback.update(check_tensors(root, {new: replacements[old] for new, old in cut.replaced.items()}))
        state.readback["seconds"] = round(time.perf_counter() - started, 3)
        report.readback = state.readback
        record = {**report.to_json(), "cut": cut.to_json()}
        _plot_scores(root / "layer_scores.png", record)
        staging.write_text(root / "README.md", model_card(record))
        record["timings"] = timings_so_far(state)
        staging.write_record(record)
    state.report = report


def write_prune(state: RunState) -> None:
    plan = state.plan
    if plan.executor in ("on-disk", "layer-streamed"):
        write_prune_on_disk(state)
    elif state.recipe.output.format == "gguf":
        write_prune_gguf(state)
    else:
        write_prune_checkpoint(state)


# --------------------------------------------------------------------------------------------- other commands


def write_score(state: RunState) -> None:
    """The scores JSON and its bar chart, side by side."""
    rec, plan = state.recipe, state.plan
    scores = state.scores
    report = ScoreReport(model=model_name(state), model_type=plan.source.model_type or (
        getattr(state.model.config, "model_type", None) if state.model is not None else None), metric=scores.metric,
        num_layers=len(scores.scores), scores=list(scores.scores),
        removal_order=sorted(range(len(scores.scores)), key=lambda i: (scores.scores[i], i)), tokens=scores.tokens,
        calibration=dict(state.calibration.settings) if state.calibration is not None else {},
        block_scores=scores.blocks or None, selection=state.details or None, scale=state.scale)
    state.report = report
    if not plan.outputs or not state.extra.get("main_process", True):
        return  # the Python API keeps the report in memory; under torchrun rank 0 writes
    spec = _spec(state)
    json_path, png = spec.files
    with _Timed(state, spec) as staging:
        removed = (state.details or {}).get("removed_layers") or []
        plot_layer_scores(report.scores, staging.path(png), metric=report.metric, removed=sorted(removed),
                          title=f"{report.model}: {report.metric} per layer")
        staging.write_record({**report.to_json(), "command": state.command_line, "recipe": rec.to_json()})


def write_sweep(state: RunState) -> None:
    result = state.result
    if not state.plan.outputs:
        return
    spec = _spec(state)
    with _Timed(state, spec) as staging:
        render_sweep(result, staging.location)
        staging.write_record({**result.to_json(), "command": state.command_line,
                              "recipe": state.recipe.to_json(), "timings": timings_so_far(state)})


def write_heads(state: RunState) -> None:
    """heads.json, the heatmaps and, for a removal a checkpoint can express, the head-removed checkpoint in
    ``model/`` (saved in the source dtype and read back like any checkpoint)."""
    rec = state.recipe
    report = state.result
    removal = state.extra.get("head_removal")
    if not state.plan.outputs:
        return
    spec = _spec(state)
    with _Timed(state, spec) as staging:
        root = staging.location
        data = report.to_json()
        if removal is not None:
            data["removal"] = removal.to_json()
        panels = [(f"{k} (mean of halves)", report.combined(k)) for k in sorted(report.scores)]
        if panels:
            plot_head_heatmaps(panels, root / "heads.png",
                               title=f"{report.model}: head importance (higher = more important)")
        if state.pruned is not None:
            folder = root / "model"
            folder.mkdir()
            info = source_info(state)
            dtype_name = resolve_save_dtype(rec.output.save_dtype, info.get("source_dtype"), state.pruned)
            save_checkpoint(state.pruned, state.tokenizer, folder, dtype_name)
            state.readback = check_checkpoint(folder, model=state.pruned, saved_dtype=dtype_name,
                                              trust_remote_code=rec.runtime.trust_remote_code)
            data["checkpoint"] = {"path": "model", "save_dtype": dtype_name, "readback": state.readback}
            staging.write_json(folder / "head_removal.json", {"model": model_name(state),
                                                               "head_removal": removal.to_json()})
        staging.write_record({**data, "command": state.command_line, "recipe": rec.to_json(),
                              "timings": timings_so_far(state)})


def write_repair(state: RunState) -> None:
    """The repaired checkpoint: the input output's record with the repair added, saved and read back."""
    rec, plan = state.recipe, state.plan
    recorded = dict(plan.record)
    fields = {k: v for k, v in recorded.items() if k in PruneReport.__dataclass_fields__}
    report = PruneReport(**fields)
    report.repair = {**(state.repair or {}), "command": state.command_line, "repaired_from": str(plan.source.path)}
    if state.perplexity:
        report.perplexity = {**(report.perplexity or {}), **state.perplexity}
    report.command = state.command_line
    report.executor = "in-memory"
    model = state.pruned
    report.params_after = sum(p.numel() for p in model.parameters())
    dtype_name = resolve_save_dtype(rec.output.save_dtype, (report.source or {}).get("source_dtype"), model)
    state.report = report
    if not state.plan.outputs:
        return
    spec = _spec(state)
    with _Timed(state, spec) as staging:
        root = staging.location
        save_checkpoint(model, state.tokenizer, root, dtype_name)
        report.save_dtype = dtype_name
        report.checkpoint_bytes = weights_bytes(root)
        state.readback = check_checkpoint(root, model=model, saved_dtype=dtype_name,
                                          trust_remote_code=rec.runtime.trust_remote_code)
        report.readback = state.readback
        record = report.to_json()
        _plot_scores(root / "layer_scores.png", record)
        staging.write_text(root / "README.md", model_card(record))
        report.timings = timings_so_far(state)
        staging.write_record(report.to_json())
    state.report = report


def write_eval(state: RunState) -> None:
    """The task results JSON (--results) and the perplexity JSON (--json), each its own file output."""
    rec = state.recipe
    for spec in state.plan.outputs:
        with _Timed(state, spec) as staging:
            if spec.flag == "--results":
                (role, result), = state.evals.items()
                staging.write_record(result)
            else:
                staging.write_record({"model": rec.model, **state.perplexity["model"]})


def write_bench(state: RunState) -> None:
    if not state.plan.outputs:
        return
    data = state.bench.to_json()
    data.setdefault("command", state.command_line)
    with _Timed(state, _spec(state)) as staging:
        staging.write_record(data)


def write_report(state: RunState) -> None:
    """report.md, report.html, their plots and a refreshed model card, into the report's own --out folder."""
    inputs = load_report_inputs(state.plan.source.path, extra=state.recipe.output.evidence or ())
    spec = _spec(state)
    with _Timed(state, spec) as staging:
        root = staging.location
        rendered = render_report(inputs, root, out=spec.path)
        staging.write_record({"report_of": str(inputs.directory), "files": sorted(rendered),
                              "command": state.command_line})
    state.result = {name: spec.path / name for name in rendered}


STAGES = {("write", "prune"): write_prune, ("write", "score"): write_score, ("write", "sweep"): write_sweep,
          ("write", "heads"): write_heads, ("write", "repair"): write_repair, ("write", "eval"): write_eval,
          ("write", "bench"): write_bench, ("write", "report"): write_report}

__all__ = ["STAGES", "model_name", "prune_record"]
