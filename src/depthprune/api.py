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
from .evaluation import PerplexityResult, check_tasks, evaluate_tasks, perplexity
from .export import save_pruned
from .models import LoadedModel, load_model
from .reports import PruneReport, ScoreReport
from .metrics import check_metric
from .selection import ascending_order, check_removal_request, removal_count
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

    def save(self, out: str | Path, *, overwrite: bool = False, save_dtype: str = "auto") -> Path:
        """Save checkpoint, tokenizer, depthprune.json, model card, plot (bench.json, eval/*.json) into ``out`` atomically.

        ``save_dtype``: ``auto`` (default) keeps the dtype the model came in (its config's dtype; bfloat16 for a
        quantized GGUF), or ``float32`` / ``bfloat16`` / ``float16``. The in-memory model is not changed.
        """
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
          eval_ppl: str | None = None, ppl_seq_len: int = 512, ppl_max_tokens: int = 40_000,
          dtype: str = "float32", device: str = "cpu", in_place: bool = False,
          bench: bool = False, bench_options: dict | None = None, command: str | None = None,
          eval_tasks: str | list[str] | None = None, eval_options: dict | None = None,
          progress: bool = True) -> PruneResult:
    """Choose layers with ``metric`` and ``strategy``, remove them, optionally measure perplexity.

    Strategies: ``one-shot`` (default metric bi), ``iterative`` (bi), ``block`` (angular) and
    ``greedy-ppl`` (ppl); see :mod:`depthprune.strategies`. ``scores`` (a ScoreReport) is reused
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
    check_removal_request(remove, ratio)
    if scores is not None and metric is None:
        metric = scores.metric
    metric = resolve(metric, strategy)
    if scores is not None:
        if scores.metric != metric:
            raise DepthpruneError(f"the given scores are '{scores.metric}' scores but metric '{metric}' was asked for")
        if strategy not in ("one-shot", "block") or (strategy == "block" and metric.startswith("angular")):
            raise DepthpruneError(f"precomputed scores can drive 'one-shot' (or 'block' with bi/relative-magnitude), "
                                  f"not '{strategy}' with '{metric}', which scores the model itself")
    if isinstance(data, str) and scores is None:
        validate_spec(data)
    if eval_ppl is not None:
        validate_spec(eval_ppl, allow_self=False)
    eval_options = dict(eval_options or {})
    if eval_tasks is not None:
        check_tasks(eval_tasks, eval_options.get("data_dir"))
    timings: dict = {}
    with _stage(timings, "loading"):
        loaded = as_loaded(model, tokenizer, dtype=dtype, device=device)
    total = num_layers(loaded.model.config)
    n = removal_count(total, remove=remove, ratio=ratio)
    layout(loaded.model)
    if scores is not None:
        if scores.num_layers != total:
            raise DepthpruneError(f"the given scores cover {scores.num_layers} layers but the model has {total}")
        precomputed = {metric: MetricScores(metric, list(scores.scores), tokens=scores.tokens)}
        calibration = None
        calibration_settings = dict(scores.calibration)
    else:
        precomputed = None
        with _stage(timings, "calibration"):
            calibration = calibration_set(loaded, data, samples=samples, seq_len=seq_len, seed=seed,
                                          text_field=text_field, batch_size=batch_size, progress=progress)
        calibration_settings = dict(calibration.settings)
    with _stage(timings, "scoring"):
        chosen, first = select(loaded.model, calibration, n, metric=metric, strategy=strategy,
                               protect_first=protect_first, protect_last=protect_last, batch_size=batch_size,
                               seed=seed, precomputed=precomputed, progress=progress)
    removed = chosen.removed

    ppl: dict = {}

    def measure(m) -> dict:
        return perplexity(m, loaded.tokenizer, eval_ppl, seq_len=ppl_seq_len, max_tokens=ppl_max_tokens,
                          progress=progress).to_json()

    evals: dict | None = None

    def tasks_of(m, role: str) -> dict:
        return evaluate_tasks(m, loaded.tokenizer, eval_tasks, model_name=loaded.source, role=role,
                              command=command, **eval_options)

    if eval_ppl is not None:
        with _stage(timings, "perplexity"):
            ppl["dense"] = measure(loaded.model)
    if eval_tasks is not None:
        with _stage(timings, "tasks"):
            evals = {"dense": tasks_of(loaded.model, "dense")}
    params_before = parameter_count(loaded.model)
    if bench:
        in_place = False  # the dense model is needed for the side-by-side measurement
    with _stage(timings, "surgery"):
        pruned = remove_layers(loaded.model, removed) if in_place else pruned_copy(loaded.model, removed)
    if eval_ppl is not None:
        with _stage(timings, "perplexity"):
            ppl["pruned"] = measure(pruned)
    if eval_tasks is not None:
        with _stage(timings, "tasks"):
            evals["pruned"] = tasks_of(pruned, "pruned")
    report = PruneReport(
        model=loaded.source, model_type=loaded.info.get("model_type"), metric=metric, strategy=strategy,
        removed_layers=removed, kept_layers=sorted(set(range(total)) - set(removed)),
        num_layers_before=total, num_layers_after=total - len(removed), params_before=params_before,
        params_after=parameter_count(pruned), scores=list(first.scores) if first else [],
        calibration=calibration_settings, protect_first=protect_first, protect_last=protect_last, perplexity=ppl,
        selection={"order": chosen.order or _one_shot_order(removed, first), **chosen.details}, command=command,
        source=_source_info(loaded), timings=timings,
    )
    comparison = None
    if bench:
        from .speed import compare

        with _stage(timings, "bench"):
            comparison = compare(loaded.model, pruned, labels=("dense", "pruned"),
                                 names=(loaded.source, f"{loaded.source} minus layers {removed}"),
                                 progress=progress, **(bench_options or {}))
        comparison.command = command
    return PruneResult(pruned, loaded.tokenizer, report, comparison, evals)


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
