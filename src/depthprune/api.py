"""The public Python API. The CLI is a thin layer over these functions.

    import depthprune as dp
    report = dp.score("smollm2-135m", data="builtin", samples=64, seq_len=256)
    result = dp.prune("smollm2-135m", ratio=0.25, data="builtin", eval_ppl="builtin:heldout")
    result.save("out/smollm2-pruned")

``model`` may be a spec string (demo alias, ``.gguf`` file, local dir, Hub id),
a :class:`~depthprune.models.LoadedModel`, or an in-memory transformers model
passed together with its ``tokenizer``. Calibration may be a data SPEC or a
ready :class:`~depthprune.data.CalibrationSet` (e.g. from
:func:`depthprune.data.from_tensors` for caller-chosen token ids).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from torch import nn

from .architectures import layout, num_layers
from .data import CalibrationSet, build_calibration, validate_spec
from .errors import DepthpruneError
from .evaluation import PerplexityResult, evaluate_tasks, perplexity
from .export import check_output_dir, save_pruned
from .models import LoadedModel, load_model
from .recipe import CalibrationRecipe, EvaluationRecipe, Recipe, RuntimeRecipe, SelectionRecipe
from .reports import PruneReport, ScoreReport
from .metrics import check_metric
from .selection import ascending_order, removal_count
from .strategies import MetricScores, compute_scores, resolve, select
from .surgery import parameter_count, pruned_copy, remove_layers

if TYPE_CHECKING:
    from .speed import BenchComparison

log = logging.getLogger(__name__)


def as_loaded(model, tokenizer=None, *, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """Normalise the ways a caller can name a model into a :class:`LoadedModel`."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(str(model), dtype=dtype, device=device)
    if isinstance(model, nn.Module):
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        return LoadedModel(model, tokenizer, name, {"kind": "in-memory",
                                                     "model_type": getattr(model.config, "model_type", None)})
    raise DepthpruneError(f"cannot use a {type(model).__name__} as a model: give a spec string or a transformers model")


def calibration_set(loaded: LoadedModel, data: str | CalibrationSet, *, samples: int = 128, seq_len: int = 512,
                    seed: int = 0, text_field: str = "text", batch_size: int = 8,
                    progress: bool = True) -> CalibrationSet:
    if isinstance(data, CalibrationSet):
        return data
    if loaded.tokenizer is None:
        raise DepthpruneError("a text data spec needs the tokenizer; pass tokenizer= or a CalibrationSet")
    return build_calibration(data, loaded.tokenizer, samples=samples, seq_len=seq_len, seed=seed,
                             text_field=text_field, model=loaded.model, batch_size=batch_size, progress=progress)


def score(model, tokenizer=None, *, data: str | CalibrationSet = "builtin", metric: str = "bi",
          samples: int = 128, seq_len: int = 512, batch_size: int = 8, seed: int = 0, text_field: str = "text",
          block_sizes: Sequence[int] = (1,), strategy: str | None = None, remove: int | None = None,
          protect_first: int = 0, protect_last: int = 0, dtype: str = "float32", device: str = "cpu",
          progress: bool = True) -> ScoreReport:
    """Importance score of every decoder layer (0-based, original numbering; higher = more important).

    ``metric``: bi, angular, angular-all, relative-magnitude, reverse-order, random, ppl or taylor.
    For the angular metrics ``block_sizes`` adds the distance of every contiguous block of each size.
    With ``strategy`` and ``remove`` the report also says which layers that strategy would remove
    (``selection``), without touching the model.
    """
    check_metric(metric)
    if (strategy is None) != (remove is None):
        raise DepthpruneError("give both --strategy and --remove to preview a selection, or neither")
    if strategy is not None:
        resolve(metric, strategy)
    if isinstance(data, str):
        validate_spec(data)
    loaded = as_loaded(model, tokenizer, dtype=dtype, device=device)
    layout(loaded.model)  # unsupported architecture: fail before any data work
    calibration = calibration_set(loaded, data, samples=samples, seq_len=seq_len, seed=seed,
                                  text_field=text_field, batch_size=batch_size, progress=progress)
    result = compute_scores(loaded.model, calibration, [metric], batch_size=batch_size, seed=seed,
                            block_sizes=block_sizes, progress=progress)[metric]
    values = result.scores
    selection = None
    if strategy is not None:
        n = removal_count(len(values), remove=remove)
        chosen, _ = select(loaded.model, calibration, n, metric=metric, strategy=strategy,
                           protect_first=protect_first, protect_last=protect_last, batch_size=batch_size, seed=seed,
                           precomputed={metric: result}, progress=progress)
        selection = {"strategy": strategy, "removed_layers": chosen.removed, "order": chosen.order, **chosen.details}
    return ScoreReport(model=loaded.source, model_type=loaded.info.get("model_type"), metric=metric,
                       num_layers=len(values), scores=values, removal_order=ascending_order(values),
                       tokens=calibration.num_tokens, calibration=dict(calibration.settings),
                       block_scores=result.blocks if metric.startswith("angular") and len(block_sizes) > 1 else None,
                       selection=selection)


@dataclass
class PruneResult:
    """The pruned model (in memory), its tokenizer and the report describing it."""

    model: nn.Module
    tokenizer: object
    report: PruneReport
    bench: BenchComparison | None = None  # dense vs pruned speed, when prune(bench=True)
    evals: dict | None = None  # {"dense": ..., "pruned": ...} lm-eval results, when prune(eval_tasks=...)

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Save checkpoint, tokenizer, depthprune.json, model card, plot (bench.json, eval/*.json) into ``out`` atomically."""
        bench = self.bench.to_json() if self.bench is not None else None
        return save_pruned(self.model, self.tokenizer, self.report, out, overwrite=overwrite, bench=bench,
                           evals=self.evals)


def evaluate_perplexity(model, tokenizer=None, spec: str = "builtin:heldout", *, seq_len: int = 512,
                        max_tokens: int = 40_000, batch_size: int = 1, text_field: str = "text",
                        dtype: str = "float32", device: str = "cpu", progress: bool = True) -> PerplexityResult:
    """Perplexity of a model on a text SPEC (non-overlapping ``seq_len`` windows, ``max_tokens`` budget)."""
    validate_spec(spec, allow_self=False)
    loaded = as_loaded(model, tokenizer, dtype=dtype, device=device)
    return perplexity(loaded.model, loaded.tokenizer, spec, seq_len=seq_len, max_tokens=max_tokens,
                      batch_size=batch_size, text_field=text_field, progress=progress)


def prune(model, tokenizer=None, *, remove: int | None = None, ratio: float | None = None,
          data: str | CalibrationSet = "builtin", metric: str | None = None, strategy: str = "one-shot",
          scores: ScoreReport | None = None, samples: int = 128, seq_len: int = 512, batch_size: int = 8,
          seed: int = 0, text_field: str = "text", protect_first: int = 0, protect_last: int = 0,
          layers: Sequence[int] | None = None,
          eval_ppl: str | None = None, ppl_seq_len: int = 512, ppl_max_tokens: int = 40_000,
          dtype: str = "float32", device: str = "cpu", in_place: bool = False,
          bench: bool = False, bench_options: dict | None = None, command: str | None = None,
          eval_tasks: str | list[str] | None = None, eval_options: dict | None = None,
          progress: bool = True) -> PruneResult:
    """Choose layers with ``metric`` and ``strategy``, remove them, optionally measure perplexity.

    A keyword front end to :func:`run`: the arguments become a :class:`~depthprune.recipe.Recipe`
    (recorded in the report), which :func:`run` executes. Nothing is saved; call ``result.save``.

    Strategies: ``one-shot`` (default metric bi), ``iterative`` (bi), ``block`` (angular) and
    ``greedy-ppl`` (ppl); see :mod:`depthprune.strategies`. ``layers`` removes exactly those
    0-based layers (no scoring). ``scores`` (a ScoreReport) is reused
    instead of scoring, for ``one-shot`` and for ``block`` with bi/relative-magnitude.
    With ``in_place=False`` (default) the given in-memory model is left untouched and a pruned copy
    is returned; ``in_place=True`` saves the memory of a copy.
    ``bench=True`` measures dense and pruned speed side by side
    (:func:`depthprune.speed.compare` with ``bench_options``) and keeps a copy for it
    even when ``in_place``. ``command`` is recorded in the report (the CLI passes its command line).
    ``eval_tasks`` runs lm-evaluation-harness tasks on the dense and the pruned model
    (:func:`depthprune.evaluation.evaluate_tasks`, ``eval_options``: data_dir, limit, num_fewshot,
    batch_size); the results are saved as ``eval/dense.json`` and ``eval/pruned.json``.
    """
    calibration = data if isinstance(data, CalibrationSet) else None
    eval_options = dict(eval_options or {})
    if isinstance(eval_tasks, (list, tuple)):
        eval_tasks = ",".join(eval_tasks)
    recipe = Recipe(
        model=model if isinstance(model, str) else str(getattr(model, "source", None) or _model_name(model)),
        calibration=CalibrationRecipe(
            data=calibration.settings.get("source", "tensors") if calibration is not None else str(data),
            samples=samples, seq_len=seq_len, batch_size=batch_size, seed=seed, text_field=text_field),
        selection=SelectionRecipe(remove=remove, ratio=ratio, layers=list(layers) if layers is not None else None,
                                  metric=metric, strategy=strategy, protect_first=protect_first,
                                  protect_last=protect_last),
        evaluation=EvaluationRecipe(ppl=eval_ppl, ppl_seq_len=ppl_seq_len, ppl_max_tokens=ppl_max_tokens,
                                    tasks=eval_tasks, limit=eval_options.get("limit"),
                                    num_fewshot=eval_options.get("num_fewshot"),
                                    data_dir=eval_options.get("data_dir"), bench=bench,
                                    bench_options=dict(bench_options or {})),
        runtime=RuntimeRecipe(dtype=dtype, device=device),
    )
    return run(recipe, model=None if isinstance(model, str) else model, tokenizer=tokenizer, scores=scores,
               calibration=calibration, in_place=in_place, command=command, progress=progress)


def _model_name(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


def run(recipe: Recipe, model=None, tokenizer=None, *, scores: ScoreReport | None = None,
        calibration: CalibrationSet | None = None, in_place: bool = True, command: str | None = None,
        progress: bool = True) -> PruneResult:
    """Execute a :class:`~depthprune.recipe.Recipe` stage by stage and return the pruned model.

    Stages: load -> calibrate -> select -> surgery -> evaluate -> save (when ``recipe.output.path``
    is set). ``model``/``tokenizer`` reuse an already loaded model instead of loading
    ``recipe.model``; ``scores`` reuses a :class:`ScoreReport` instead of scoring; ``calibration``
    a ready :class:`CalibrationSet`. Everything is validated before any model or data work.
    """
    recipe.validate(check_data=calibration is None and scores is None)
    sel, cal, ev, rt, out = recipe.selection, recipe.calibration, recipe.evaluation, recipe.runtime, recipe.output
    if out.path is not None and out.format == "gguf" and str(out.path).endswith(".gguf"):  # formats.gguf_export
        from .formats.gguf_export import check_gguf_file

        check_gguf_file(out.path, out.overwrite)
    elif out.path is not None:
        check_output_dir(out.path, out.overwrite)
    explicit = sel.layers is not None
    metric = sel.metric
    if explicit:
        if scores is not None:
            raise DepthpruneError("give either explicit layers or scores to choose from, not both")
    else:
        if scores is not None and metric is None:
            metric = scores.metric
        metric = resolve(metric, sel.strategy)
        if scores is not None:
            if scores.metric != metric:
                raise DepthpruneError(f"the given scores are '{scores.metric}' scores but metric '{metric}' was asked for")
            if sel.strategy not in ("one-shot", "block") or (sel.strategy == "block" and metric.startswith("angular")):
                raise DepthpruneError(f"precomputed scores can drive 'one-shot' (or 'block' with bi/relative-magnitude), "
                                      f"not '{sel.strategy}' with '{metric}', which scores the model itself")
    loaded = as_loaded(model if model is not None else recipe.model, tokenizer, dtype=rt.dtype, device=rt.device)
    total = num_layers(loaded.model.config)
    layout(loaded.model)
    calibration_settings: dict = {}
    first = None
    if explicit:
        bad = [i for i in sel.layers if i >= total]
        if bad:
            raise DepthpruneError(f"layer(s) {bad} do not exist: the model has {total} layers (0-based, 0..{total - 1})")
        if len(sel.layers) >= total:
            raise DepthpruneError(f"cannot remove all {total} layers; keep at least one")
        removed, order, details = sorted(sel.layers), list(sel.layers), {"given": True}
    else:
        n = removal_count(total, remove=sel.remove, ratio=sel.ratio)
        if scores is not None:
            if scores.num_layers != total:
                raise DepthpruneError(f"the given scores cover {scores.num_layers} layers but the model has {total}")
            precomputed = {metric: MetricScores(metric, list(scores.scores), tokens=scores.tokens)}
            calibration_settings = dict(scores.calibration)
        else:
            precomputed = None
            calibration = calibration_set(loaded, calibration if calibration is not None else cal.data,
                                          samples=cal.samples, seq_len=cal.seq_len, seed=cal.seed,
                                          text_field=cal.text_field, batch_size=cal.batch_size, progress=progress)
            calibration_settings = dict(calibration.settings)
        chosen, first = select(loaded.model, calibration if scores is None else None, n, metric=metric,
                               strategy=sel.strategy, protect_first=sel.protect_first, protect_last=sel.protect_last,
                               batch_size=cal.batch_size, seed=cal.seed, precomputed=precomputed, progress=progress)
        removed, order, details = chosen.removed, chosen.order, chosen.details

    ppl: dict = {}
    evals: dict | None = None

    def measure(m) -> dict:
        return perplexity(m, loaded.tokenizer, ev.ppl, seq_len=ev.ppl_seq_len, max_tokens=ev.ppl_max_tokens,
                          progress=progress).to_json()

    def tasks_of(m, role: str) -> dict:
        return evaluate_tasks(m, loaded.tokenizer, ev.tasks, model_name=loaded.source, role=role,
                              command=command, **ev.task_options(cal.batch_size))

    if ev.ppl is not None:
        ppl["dense"] = measure(loaded.model)
    if ev.tasks is not None:
        evals = {"dense": tasks_of(loaded.model, "dense")}
    params_before = parameter_count(loaded.model)
    keep_dense = ev.bench or not in_place  # the dense model is needed for the side-by-side measurement
    pruned = pruned_copy(loaded.model, removed) if keep_dense else remove_layers(loaded.model, removed)
    if recipe.quantization.method is not None:  # quantize stage (formats.quantize): evaluated and saved quantized
        from .formats.quantize import quantize_model

        pruned = quantize_model(pruned, recipe.quantization.method, group_size=recipe.quantization.group_size)
    if ev.ppl is not None:
        ppl["pruned"] = measure(pruned)
    if ev.tasks is not None:
        evals["pruned"] = tasks_of(pruned, "pruned")
    report = PruneReport(
        model=loaded.source, model_type=loaded.info.get("model_type"), metric=metric or "given",
        strategy="given" if explicit else sel.strategy,
        removed_layers=removed, kept_layers=sorted(set(range(total)) - set(removed)),
        num_layers_before=total, num_layers_after=total - len(removed), params_before=params_before,
        params_after=parameter_count(pruned), scores=list(first.scores) if first else list(scores.scores) if scores else [],
        calibration=calibration_settings, protect_first=sel.protect_first, protect_last=sel.protect_last,
        perplexity=ppl, selection={"order": order, **details}, command=command, recipe=recipe.to_json(),
    )
    comparison = None
    if ev.bench:
        from .speed import compare

        comparison = compare(loaded.model, pruned, labels=("dense", "pruned"),
                             names=(loaded.source, f"{loaded.source} minus layers {removed}"),
                             progress=progress, **ev.bench_options)
        comparison.command = command
    result = PruneResult(pruned, loaded.tokenizer, report, comparison, evals)
    if out.path is not None and out.format == "gguf":  # formats.gguf_export
        from .formats.gguf_export import save_pruned_gguf

        save_pruned_gguf(result, out.path, gguf_type=out.gguf_type, overwrite=out.overwrite)
    elif out.path is not None:
        result.save(out.path, overwrite=out.overwrite)
    return result


def sweep(model, tokenizer=None, **kwargs):
    """Perplexity vs layers removed per metric/strategy; see :func:`depthprune.sweep.sweep`."""
    from .sweep import sweep as _sweep

    return _sweep(model, tokenizer, **kwargs)
