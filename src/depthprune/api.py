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

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from torch import nn

from .architectures import layout, num_layers
from .data import CalibrationSet, build_calibration, validate_spec
from .errors import DepthpruneError
from .evaluation import PerplexityResult, evaluate_tasks, perplexity
from .export import check_output_dir, save_pruned
from .guards.model_files import check_causal_decoder
from .guards.settings import check_batch_size, check_seed, check_seq_len
from .models import LoadedModel, load_model
from .recipe import CalibrationRecipe, EvaluationRecipe, Recipe, RepairRecipe, RuntimeRecipe, SelectionRecipe
from .reports import PruneReport, ScoreReport
from .metrics import check_metric
from .selection import ascending_order, removal_count
from .strategies import MetricScores, apply_selection, compute_scores, resolve, select
from .surgery import parameter_count, pruned_copy, remove_layers

if TYPE_CHECKING:
    from .speed import BenchComparison

log = logging.getLogger(__name__)


def as_loaded(model, tokenizer=None, *, dtype: str = "float32", device: str = "cpu",
              trust_remote_code: bool = False) -> LoadedModel:
    """Normalise the ways a caller can name a model into a :class:`LoadedModel`.

    ``trust_remote_code`` (default False) is passed to every transformers load; a model that
    needs its own code is refused without it.
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(str(model), dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if isinstance(model, nn.Module):
        check_causal_decoder(model.config, f"model {type(model).__name__}")
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
          offload: str = "none", activation_budget_mb: int = 1024, progress: bool = True,
          trust_remote_code: bool = False) -> ScoreReport:
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
    check_batch_size(batch_size)
    check_seed(seed)
    if isinstance(data, str):
        validate_spec(data)
    # --- scale (issue 12): layer-streamed (offload="layers"/"auto") and torchrun data-parallel scoring ---
    from .scale.pipeline import score_scaled, wants_scaled_scoring

    if wants_scaled_scoring(model, offload, dtype):
        return score_scaled(model, tokenizer, data=data, metric=metric, samples=samples, seq_len=seq_len,
                            batch_size=batch_size, seed=seed, text_field=text_field, block_sizes=block_sizes,
                            strategy=strategy, remove=remove, protect_first=protect_first,
                            protect_last=protect_last, dtype=dtype, device=device, offload=offload,
                            activation_budget_mb=activation_budget_mb, progress=progress)
    # --- end scale ---
    loaded = as_loaded(model, tokenizer, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    layout(loaded.model)  # unsupported architecture: fail before any data work
    if not isinstance(data, CalibrationSet):  # a ready calibration set brings its own length
        check_seq_len(loaded.model, seq_len)
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
    """The pruned model (in memory), its tokenizer and the report describing it.

    ``model`` and ``tokenizer`` are None when the checkpoint was pruned on disk (``RuntimeRecipe.offload``).
    """

    model: nn.Module
    tokenizer: object
    report: PruneReport
    bench: BenchComparison | None = None  # dense vs pruned speed, when prune(bench=True)
    evals: dict | None = None  # {"dense": ..., "pruned": ...} lm-eval results, when prune(eval_tasks=...)

    def save(self, out: str | Path, *, overwrite: bool = False, save_dtype: str = "auto") -> Path:
        """Save checkpoint, tokenizer, depthprune.json, model card, plot (bench.json, eval/*.json) into ``out`` atomically.

        ``save_dtype``: ``auto`` (default) keeps the dtype the model came in (its config's dtype; bfloat16 for a
        quantized GGUF), or ``float32`` / ``bfloat16`` / ``float16``. The in-memory model is not changed.
        """
        if self.model is None:  # scale (issue 12): pruned on disk by api.run with offload, already written
            raise DepthpruneError("this result was pruned on disk (offload) and is already saved at its output path")
        bench = self.bench.to_json() if self.bench is not None else None
        started = time.perf_counter()
        path = save_pruned(self.model, self.tokenizer, self.report, out, overwrite=overwrite, bench=bench,
                           evals=self.evals, save_dtype=save_dtype)
        self.report.timings["save"] = round(time.perf_counter() - started, 3)
        return path


@contextlib.contextmanager
def _stage(timings: dict, name: str):
    """Add the wall time of the block to ``timings[name]`` (seconds)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 3)


def evaluate_perplexity(model, tokenizer=None, spec: str = "builtin:heldout", *, seq_len: int = 512,
                        max_tokens: int = 40_000, batch_size: int = 1, text_field: str = "text",
                        dtype: str = "float32", device: str = "cpu", progress: bool = True,
                        trust_remote_code: bool = False) -> PerplexityResult:
    """Perplexity of a model on a text SPEC (non-overlapping ``seq_len`` windows, ``max_tokens`` budget)."""
    check_batch_size(batch_size)
    validate_spec(spec, allow_self=False)
    loaded = as_loaded(model, tokenizer, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    check_seq_len(loaded.model, seq_len)
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
          progress: bool = True, laco=None, trust_remote_code: bool = False) -> PruneResult:
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
    ``laco``: LaCo settings for ``strategy="laco"`` (a :class:`depthprune.merging.LacoSettings` or a
    ``"C=3,L=1,I=1,T=0.5"`` string); the merged layers' weights change, the merged-away layers go.
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
                                  protect_last=protect_last, laco=_laco_text(laco)),
        evaluation=EvaluationRecipe(ppl=eval_ppl, ppl_seq_len=ppl_seq_len, ppl_max_tokens=ppl_max_tokens,
                                    tasks=eval_tasks, limit=eval_options.get("limit"),
                                    num_fewshot=eval_options.get("num_fewshot"),
                                    data_dir=eval_options.get("data_dir"), bench=bench,
                                    bench_options=dict(bench_options or {})),
        runtime=RuntimeRecipe(dtype=dtype, device=device, trust_remote_code=trust_remote_code),
    )
    return run(recipe, model=None if isinstance(model, str) else model, tokenizer=tokenizer, scores=scores,
               calibration=calibration, in_place=in_place, command=command, progress=progress)


def _laco_text(laco) -> str | None:
    """LaCo settings as the recipe's string form ("C=3,L=1,I=1,T=0.5"; None: defaults)."""
    if laco is None or isinstance(laco, str):
        return laco
    from .merging import LacoSettings

    if isinstance(laco, LacoSettings):
        return laco.to_text()
    raise DepthpruneError(f"laco settings must be a LacoSettings or a 'C=..,T=..' string, not {type(laco).__name__}")


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
    if scores is None and recipe.selection.scores is not None:  # a recorded scores file drives the selection
        from .scale.pipeline import score_file

        scores = score_file(recipe.selection.scores)
    recipe.validate(check_data=calibration is None and scores is None)
    sel, cal, ev, rt, out = recipe.selection, recipe.calibration, recipe.evaluation, recipe.runtime, recipe.output
    inputs = [recipe.model, cal.data, ev.ppl, ev.data_dir, recipe.repair.data]  # --out may be none of these
    if out.path is not None and out.format != "gguf":
        check_output_dir(out.path, out.overwrite, inputs=inputs)
    # --- GGUF output (issue 9 section 1): the destination is checked before any model work
    if out.path is not None and out.format == "gguf":
        from .formats.gguf_prune import check_gguf_destination

        from .guards.outputs import check_not_input

        check_not_input(out.path, inputs)
        check_gguf_destination(out.path, out.overwrite)
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
    # --- scale (issue 12): offload -> layer-streamed scoring and pruning the checkpoint on disk ---
    from .scale.pipeline import offload_applies, prune_offloaded

    if offload_applies(recipe, model):
        report = prune_offloaded(recipe, scores=scores, calibration=calibration, command=command, progress=progress)
        return PruneResult(None, None, report)
    # --- end scale ---
    timings: dict = {}
    with _stage(timings, "loading"):
        loaded = as_loaded(model if model is not None else recipe.model, tokenizer, dtype=rt.dtype, device=rt.device,
                           trust_remote_code=rt.trust_remote_code)
    total = num_layers(loaded.model.config)
    layout(loaded.model)
    if not explicit and scores is None and calibration is None:
        check_seq_len(loaded.model, cal.seq_len)
    if ev.ppl is not None:
        check_seq_len(loaded.model, ev.ppl_seq_len, "--ppl-seq-len")
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
            with _stage(timings, "calibration"):
                calibration = calibration_set(loaded, calibration if calibration is not None else cal.data,
                                              samples=cal.samples, seq_len=cal.seq_len, seed=cal.seed,
                                              text_field=cal.text_field, batch_size=cal.batch_size, progress=progress)
            calibration_settings = dict(calibration.settings)
        with _stage(timings, "scoring"):
            chosen, first = select(loaded.model, calibration if scores is None else None, n, metric=metric,
                                   strategy=sel.strategy, protect_first=sel.protect_first,
                                   protect_last=sel.protect_last, batch_size=cal.batch_size, seed=cal.seed,
                                   precomputed=precomputed, progress=progress, laco=sel.laco)
        removed, order, details = chosen.removed, chosen.order or _one_shot_order(chosen.removed, first), chosen.details

    # --- GGUF output (issue 9 section 1): refuse removals the GGUF cannot represent before evaluating
    gguf_source = None
    if out.path is not None and out.format == "gguf":
        from .formats.gguf_prune import check_gguf_removal, source_gguf

        # a GGUF source whose kept weights stay as they are: cut the original file (quantized bytes kept);
        # otherwise (a transformers source, LaCo merges, repair) the pruned model is exported by formats.gguf_export
        weights_changed = bool(recipe.repair.methods) or (not explicit and sel.strategy == "laco")
        gguf_source = None if weights_changed else source_gguf(loaded)
        if gguf_source is not None:
            check_gguf_removal(gguf_source, removed)

    ppl: dict = {}
    evals: dict | None = None

    def measure(m) -> dict:
        return perplexity(m, loaded.tokenizer, ev.ppl, seq_len=ev.ppl_seq_len, max_tokens=ev.ppl_max_tokens,
                          progress=progress).to_json()

    def tasks_of(m, role: str) -> dict:
        return evaluate_tasks(m, loaded.tokenizer, ev.tasks, model_name=loaded.source, role=role,
                              command=command, trust_remote_code=rt.trust_remote_code,
                              **ev.task_options(cal.batch_size))

    repairing = bool(recipe.repair.methods)
    if repairing:  # repair (issue 10): refuse an impossible repair before any measurement
        from .repair.stage import check_repairable

        check_repairable(recipe.repair, loaded.model, removed)
    if ev.ppl is not None:
        with _stage(timings, "perplexity"):
            ppl["dense"] = measure(loaded.model)
    if ev.tasks is not None:
        with _stage(timings, "tasks"):
            evals = {"dense": tasks_of(loaded.model, "dense")}
    params_before = parameter_count(loaded.model)
    # the dense model is needed for the side-by-side measurement, and by repair (activations, teacher)
    keep_dense = ev.bench or not in_place or repairing
    with _stage(timings, "surgery"):
        if explicit:
            pruned = pruned_copy(loaded.model, removed) if keep_dense else remove_layers(loaded.model, removed)
        else:  # laco: merged, then removed
            pruned = apply_selection(loaded.model, chosen, in_place=not keep_dense)
    repair_report = None
    if repairing:  # --- repair stage (issue 10) ---
        from .repair.stage import run_repair

        if ev.ppl is not None:
            ppl["unrepaired"] = measure(pruned)
        if "linear" in recipe.repair.methods and calibration is None:
            calibration = calibration_set(loaded, cal.data, samples=cal.samples, seq_len=cal.seq_len, seed=cal.seed,
                                          text_field=cal.text_field, batch_size=cal.batch_size, progress=progress)
        with _stage(timings, "repair"):
            pruned, repair_report = run_repair(recipe.repair, loaded.model, pruned, removed, calibration=calibration,
                                               tokenizer=loaded.tokenizer, batch_size=cal.batch_size,
                                               progress=progress)
    if recipe.quantization.method is not None:  # quantize stage (formats.quantize): evaluated and saved quantized
        from .formats.quantize import quantize_model

        with _stage(timings, "quantization"):
            pruned = quantize_model(pruned, recipe.quantization.method, group_size=recipe.quantization.group_size)
    if ev.ppl is not None:
        with _stage(timings, "perplexity"):
            ppl["pruned"] = measure(pruned)
        if repair_report is not None and recipe.quantization.method is None:  # quantized: not comparable
            from .repair.stage import heldout_verdict

            repair_report["heldout"] = heldout_verdict(ppl)
    if ev.tasks is not None:
        with _stage(timings, "tasks"):
            evals["pruned"] = tasks_of(pruned, "pruned")
    report = PruneReport(
        model=loaded.source, model_type=loaded.info.get("model_type"), metric=metric or "given",
        strategy="given" if explicit else sel.strategy,
        removed_layers=removed, kept_layers=sorted(set(range(total)) - set(removed)),
        num_layers_before=total, num_layers_after=total - len(removed), params_before=params_before,
        params_after=parameter_count(pruned), scores=list(first.scores) if first else list(scores.scores) if scores else [],
        calibration=calibration_settings, protect_first=sel.protect_first, protect_last=sel.protect_last,
        perplexity=ppl, selection={"order": order, **details}, command=command, recipe=recipe.to_json(),
        repair=repair_report, source=_source_info(loaded), timings=timings,
    )
    comparison = None
    if ev.bench:
        from .speed import compare

        with _stage(timings, "bench"):
            comparison = compare(loaded.model, pruned, labels=("dense", "pruned"),
                                 names=(loaded.source, f"{loaded.source} minus layers {removed}"),
                                 progress=progress, **ev.bench_options)
        comparison.command = command
    result = PruneResult(pruned, loaded.tokenizer, report, comparison, evals)
    if gguf_source is not None:  # GGUF output (issue 9 section 1): cut from the original file's bytes
        from .formats.gguf_prune import save_gguf

        save_gguf(gguf_source, report, out.path, overwrite=out.overwrite,
                  bench=comparison.to_json() if comparison is not None else None, evals=evals)
    elif out.path is not None and out.format == "gguf":  # any other source, or changed weights: export (formats.gguf_export)
        from .formats.gguf_export import save_pruned_gguf

        save_pruned_gguf(result, out.path, gguf_type=out.gguf_type, overwrite=out.overwrite)
    elif out.path is not None:
        # quantized weights are saved as they are (a cast would dequantize them)
        save_dtype = out.save_dtype if recipe.quantization.method is None else rt.dtype
        result.save(out.path, overwrite=out.overwrite, save_dtype=save_dtype)
    return result


def _one_shot_order(removed: list[int], first: MetricScores | None) -> list[int]:
    """One-shot removes all at once; its order is the chosen layers from least to most important."""
    if first is None or not first.scores:
        return list(removed)
    return sorted(removed, key=lambda i: (first.scores[i], i))


def _source_info(loaded: LoadedModel) -> dict:
    """Where the weights came from, for the saved checkpoint's dtype and the model card's lineage."""
    from .models import declared_dtype

    info = {key: loaded.info.get(key) for key in ("kind", "source_dtype", "upstream", "description")
            if loaded.info.get(key) is not None}
    if "source_dtype" not in info:
        info["source_dtype"] = declared_dtype(loaded.model.config) or str(
            next(loaded.model.parameters()).dtype).removeprefix("torch.")
    if info.get("kind") == "hub":
        info["hub_id"] = loaded.source
    return info


def sweep(model, tokenizer=None, **kwargs):
    """Perplexity vs layers removed per metric/strategy; see :func:`depthprune.sweep.sweep`."""
    from .sweep import sweep as _sweep

    return _sweep(model, tokenizer, **kwargs)


# --- width (issue 11) -------------------------------------------------------------------------------

def heads(model, tokenizer=None, **kwargs):
    """Attention head / KV-group importance and pattern statistics; see :func:`depthprune.width.score_heads`.
    Returns (HeadReport, LoadedModel)."""
    from .width import score_heads

    return score_heads(model, tokenizer, **kwargs)


# --- repair an existing depthprune output (issue 10) ---------------------------------------------

def repair(pruned_dir: str | Path, repair: "RepairRecipe", *, out: str | Path | None = None, overwrite: bool = False,
           calibration: "CalibrationRecipe | None" = None, eval_ppl: str | None = None, ppl_seq_len: int = 512,
           ppl_max_tokens: int = 40_000, dtype: str = "float32", device: str = "cpu", command: str | None = None,
           progress: bool = True) -> PruneResult:
    """Repair the checkpoint in ``pruned_dir`` (a depthprune output) and save it to ``out`` (when given).

    ``linear`` and ``distill`` need the dense model: it is loaded from the source recorded in the output's
    ``depthprune.json``, with the recorded calibration unless ``calibration`` is given.
    """
    from .repair.stage import (build_repair_calibration, calibration_recipe_of, check_repairable, heldout_verdict,
                               read_output, run_repair)
    from .surgery import validate_layer_indices

    recorded = read_output(pruned_dir)
    repair.validate()
    if eval_ppl is not None:
        validate_spec(eval_ppl, allow_self=False)
    if out is not None:
        check_output_dir(out, overwrite)
    if not repair.methods:
        raise DepthpruneError("name a repair method: --method linear, lora or linear,lora")
    removed = list(recorded.get("removed_layers") or [])
    total = int(recorded.get("num_layers_before", 0))
    validate_layer_indices(removed, total)
    loaded = load_model(str(pruned_dir), dtype=dtype, device=device)
    dense = None
    if "linear" in repair.methods or repair.distill:
        dense = load_model(str(recorded["model"]), dtype=dtype, device=device).model
        if num_layers(dense.config) != total:
            raise DepthpruneError(f"the recorded source model '{recorded['model']}' has {num_layers(dense.config)} "
                                  f"layers but the output was pruned from a {total}-layer model")
    check_repairable(repair, dense if dense is not None else loaded.model, removed if dense is not None else [])
    cal_set = None
    if "linear" in repair.methods:
        cal_recipe = calibration or calibration_recipe_of(recorded)
        cal_set = build_repair_calibration(cal_recipe, loaded.tokenizer, dense, progress)
    ppl: dict = {}
    if eval_ppl is not None:
        ppl["unrepaired"] = perplexity(loaded.model, loaded.tokenizer, eval_ppl, seq_len=ppl_seq_len,
                                       max_tokens=ppl_max_tokens, progress=progress).to_json()
    model, report_json = run_repair(repair, dense, loaded.model, removed, calibration=cal_set,
                                    tokenizer=loaded.tokenizer, progress=progress)
    if eval_ppl is not None:
        ppl["pruned"] = perplexity(model, loaded.tokenizer, eval_ppl, seq_len=ppl_seq_len, max_tokens=ppl_max_tokens,
                                   progress=progress).to_json()
        report_json["heldout"] = heldout_verdict(ppl)
    report_json["command"] = command
    report_json["repaired_from"] = str(pruned_dir)
    fields_ = {k: v for k, v in recorded.items() if k in PruneReport.__dataclass_fields__}
    report = PruneReport(**fields_)
    report.repair = report_json
    if ppl:
        report.perplexity = {**(report.perplexity or {}), **ppl}
    result = PruneResult(model, loaded.tokenizer, report)
    if out is not None:
        result.save(out, overwrite=overwrite)
    return result
