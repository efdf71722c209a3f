"""The Python API: each function builds a recipe, plans it and runs the plan (the same path as the CLI).

``dp.prune``, ``dp.score``, ``dp.sweep``, ``dp.heads`` and ``dp.repair`` are keyword front ends to :func:`run`,
which takes a :class:`~depthprune.recipe.schema.Recipe`. Every run goes through
:func:`depthprune.pipeline.plan.plan` (everything checkable without weights, before any work) and
:func:`depthprune.pipeline.runner.execute` (the stages); every file goes through :mod:`depthprune.io.writer`.
A model may be given as a spec string, a :class:`~depthprune.io.models.LoadedModel` or an in-memory transformers
model (with its tokenizer); a calibration set (:func:`~depthprune.io.data.from_tensors`) replaces the data spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from depthprune.errors import DepthpruneError
from depthprune.evaluation.perplexity import PerplexityResult, perplexity
from depthprune.evaluation.speed import BenchComparison
from depthprune.io.data import CalibrationSet, validate_spec
from depthprune.io.guards.settings import check_batch_size, check_seq_len
from depthprune.io.loading import as_loaded
from depthprune.io.models import LoadedModel
from depthprune.io.writer import OutputSpec, check_output
from depthprune.pipeline.plan import plan as make_plan
from depthprune.pipeline.runner import execute
from depthprune.pipeline.stages.write import write_prune
from depthprune.pipeline.state import RunState
from depthprune.recipe.schema import Recipe, RepairRecipe
from depthprune.reporting.records import PruneReport, ScoreReport


@dataclass
class PruneResult:
    """The pruned model (in memory), its tokenizer and the report describing it.

    ``model`` and ``tokenizer`` are None when the checkpoint was cut on disk (on-disk / layer-streamed / GGUF cut
    executors): it is already written at the recipe's output path.
    """

    model: nn.Module | None
    tokenizer: object
    report: PruneReport
    bench: BenchComparison | None = None
    evals: dict | None = None
    state: RunState | None = None

    def save(self, out: str | Path, *, overwrite: bool = False, save_dtype: str = "auto") -> Path:
        """Write checkpoint, tokenizer, depthprune.json, model card and plot into ``out`` (atomically, read back).

        ``save_dtype``: ``auto`` (the dtype the model came in) or float32 / bfloat16 / float16; the in-memory model
        is not changed. The same write stage as ``depthprune prune --out`` (:mod:`depthprune.pipeline.stages.write`).
        """
        if self.model is None or self.state is None:
            raise DepthpruneError("this result was cut on disk and is already saved at its output path")
        state = self.state
        rec = state.recipe
        rec.replace("output", path=str(out), overwrite=overwrite, save_dtype=save_dtype, format="hf")
        spec = OutputSpec("prune", Path(out).expanduser(), overwrite=overwrite)
        check_output(spec, state.plan.inputs)
        state.plan.outputs = [spec]
        write_prune(state)
        self.report = state.report
        return spec.path


# --------------------------------------------------------------------------------------------- the one entry


def _given(model, tokenizer, data) -> tuple[Any, Any, CalibrationSet | None]:
    """(model for the plan or None, tokenizer, calibration set or None)."""
    calibration = data if isinstance(data, CalibrationSet) else None
    if isinstance(model, (str, Path)):
        return None, tokenizer, calibration
    if isinstance(model, LoadedModel):
        return model, tokenizer if tokenizer is not None else model.tokenizer, calibration
    if isinstance(model, nn.Module):
        return model, tokenizer, calibration
    raise DepthpruneError(f"cannot use a {type(model).__name__} as a model: give a spec string or a transformers model")


def execute_recipe(recipe: Recipe, model=None, tokenizer=None, *, calibration: CalibrationSet | None = None,
                   scores: ScoreReport | None = None, command: str | None = None, progress: bool = True,
                   recipe_source: str | Path | None = None, require_output: bool = False,
                   in_place: bool = False, started: float | None = None) -> RunState:
    """Plan ``recipe`` and run it; returns the final run state (what every command's results are read from).

    ``started``: the ``time.perf_counter()`` a wall-time budget counts from (default: now).

    ``in_place``: a given in-memory model may be cut in place (saves the memory of a copy); by default it is left
    untouched.
    """
    given = model if model is not None and not isinstance(model, (str, Path)) else None
    if given is not None and tokenizer is None and isinstance(given, LoadedModel):
        tokenizer = given.tokenizer
    plan = make_plan(recipe, model=given.model if isinstance(given, LoadedModel) else given,
                     calibration=calibration, scores=scores, recipe_source=recipe_source,
                     require_output=require_output)
    state = RunState(plan, progress=progress, command_line=command, given_model=given, given_tokenizer=tokenizer,
                     given_calibration=calibration, given_scores=scores)
    state.extra["in_place"] = in_place
    if started is not None:
        state.extra["started"] = started
    return execute(plan, state)


def _prune_result(state: RunState) -> PruneResult:
    return PruneResult(state.pruned, state.tokenizer if state.pruned is not None else None, state.report,
                       state.bench, state.evals, state)


def run(recipe: Recipe, model=None, tokenizer=None, *, scores: ScoreReport | None = None,
        calibration: CalibrationSet | None = None, command: str | None = None, progress: bool = True,
        in_place: bool = False, recipe_source: str | Path | None = None):
    """Run a recipe of any command. ``prune`` returns a :class:`PruneResult` (saved already when the recipe names
    ``output.path``); ``score`` a ScoreReport; ``sweep`` a SweepResult; ``heads`` a HeadReport; ``eval``/``bench``
    the run state. ``in_place``: a given in-memory model may be pruned in place (no copy); by default it is left
    untouched."""
    state = execute_recipe(recipe, model, tokenizer, calibration=calibration, scores=scores, command=command,
                           progress=progress, recipe_source=recipe_source, in_place=in_place)
    return _result(state)


def _result(state: RunState):
    cmd = state.plan.command
    if cmd in ("prune", "repair"):
        return _prune_result(state)
    if cmd in ("score", "sweep", "heads"):
        return state.report if cmd == "score" else state.result
    return state


# --------------------------------------------------------------------------------------------- keyword front ends


def _model_spec(model) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    if isinstance(model, LoadedModel):
        return model.source
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model).__name__)


def _data_spec(data) -> str:
    return data.settings.get("source", "tensors") if isinstance(data, CalibrationSet) else str(data)


def score(model, tokenizer=None, *, data: str | CalibrationSet = "builtin", metric: str = "bi",
          samples: int = 128, seq_len: int = 512, batch_size: int = 8, seed: int = 0, text_field: str = "text",
          block_sizes: Sequence[int] = (1,), strategy: str | None = None, remove: int | None = None,
          protect_first: int = 0, protect_last: int = 0, dtype: str = "float32", device: str = "cpu",
          offload: str = "none", activation_budget_mb: int | None = None, progress: bool = True,
          trust_remote_code: bool = False) -> ScoreReport:
    """Importance score of every decoder layer (0-based, original numbering; higher = more important).

    ``metric``: bi, angular, angular-all, relative-magnitude, reverse-order, random, ppl or taylor. For the angular
    metrics ``block_sizes`` adds the distance of every contiguous block of each size. With ``strategy`` and
    ``remove`` the report also says which layers that strategy would remove (``selection``), without touching the
    model. ``offload="layers"`` streams a safetensors checkpoint one decoder layer at a time.
    """
    if (strategy is None) != (remove is None):
        raise DepthpruneError("give both --strategy and --remove to preview a selection, or neither")
    given, tokenizer, calibration = _given(model, tokenizer, data)
    sizes = sorted(set(int(n) for n in block_sizes))
    recipe = Recipe.for_command("score", _model_spec(model), calibration={
        "data": _data_spec(data), "samples": samples, "seq_len": seq_len, "batch_size": batch_size, "seed": seed,
        "text_field": text_field}, selection={
        "metric": metric, "strategy": strategy, "remove": remove, "protect_first": protect_first,
        "protect_last": protect_last, "block_sizes": sizes if sizes != [1] else None},
        runtime={"dtype": dtype, "device": device, "offload": offload, "activation_budget_mb": activation_budget_mb,
                 "trust_remote_code": trust_remote_code})
    state = execute_recipe(recipe, given, tokenizer, calibration=calibration, progress=progress)
    return state.report


def prune(model, tokenizer=None, *, remove: int | None = None, ratio: float | None = None,
          data: str | CalibrationSet = "builtin", metric: str | None = None, strategy: str = "one-shot",
          scores: ScoreReport | None = None, samples: int = 128, seq_len: int = 512, batch_size: int = 8,
          seed: int = 0, text_field: str = "text", protect_first: int = 0, protect_last: int = 0,
          layers: Sequence[int] | None = None, eval_ppl: str | None = None, ppl_seq_len: int = 512,
          ppl_max_tokens: int = 40_000, dtype: str = "float32", device: str = "cpu", in_place: bool = False,
          bench: bool = False, bench_options: dict | None = None, command: str | None = None,
          eval_tasks: str | list[str] | None = None, eval_options: dict | None = None,
          progress: bool = True, laco=None, trust_remote_code: bool = False) -> PruneResult:
    """Choose layers with ``metric`` and ``strategy``, remove them, optionally measure perplexity and speed.

    A keyword front end to :func:`run` (the arguments become a recipe, recorded in the report). Nothing is saved;
    call ``result.save``. ``layers`` removes exactly those 0-based layers (no scoring); ``scores`` (a ScoreReport)
    is reused instead of scoring. With ``in_place=False`` (default) a given in-memory model is left untouched and a
    pruned copy is returned. ``bench=True`` measures dense and pruned speed side by side (``bench_options``:
    seq_lens, decode_tokens, repeats, threads...). ``eval_tasks`` runs lm-eval tasks on both (``eval_options``:
    data_dir, limit, num_fewshot). ``laco``: LaCo settings for ``strategy="laco"`` (``"C=3,L=1,I=1,T=0.5"``).
    """
    given, tokenizer, calibration = _given(model, tokenizer, data)
    if isinstance(eval_tasks, str):
        eval_tasks = [t.strip() for t in eval_tasks.split(",") if t.strip()]
    eval_options = dict(eval_options or {})
    limit = eval_options.get("limit")
    recipe = Recipe.for_command("prune", _model_spec(model), calibration={
        "data": _data_spec(data), "samples": samples, "seq_len": seq_len, "batch_size": batch_size, "seed": seed,
        "text_field": text_field}, selection={
        "remove": remove, "ratio": ratio, "layers": list(layers) if layers is not None else None, "metric": metric,
        "strategy": strategy, "protect_first": protect_first, "protect_last": protect_last,
        "laco": str(laco) if laco is not None and not isinstance(laco, str) else laco}, evaluation={
        "ppl": eval_ppl, "ppl_seq_len": ppl_seq_len, "ppl_max_tokens": ppl_max_tokens, "tasks": eval_tasks,
        "limit": float(limit) if isinstance(limit, int) else limit, "num_fewshot": eval_options.get("num_fewshot"),
        "data_dir": eval_options.get("data_dir"), "bench": bench},
        bench={k: v for k, v in (bench_options or {}).items()},
        runtime={"dtype": dtype, "device": device, "trust_remote_code": trust_remote_code})
    state = execute_recipe(recipe, given, tokenizer, calibration=calibration, scores=scores, command=command,
                           progress=progress, in_place=in_place)
    return _prune_result(state)


def sweep(model, tokenizer=None, *, metrics: Sequence[str] = ("bi", "angular", "relative-magnitude", "ppl", "taylor",
                                                               "reverse-order", "random"),
          strategies: Sequence[str] = ("one-shot",), max_remove: int | None = None,
          counts: Sequence[int] | None = None, data: str | CalibrationSet = "builtin", ppl: str = "builtin:heldout",
          samples: int = 32, seq_len: int = 256, batch_size: int = 8, seed: int = 0, text_field: str = "text",
          ppl_seq_len: int = 512, ppl_max_tokens: int = 16_384, protect_first: int = 0, protect_last: int = 0,
          dtype: str = "float32", device: str = "cpu", progress: bool = True, laco=None,
          tasks: str | Sequence[str] | None = None, task_options: dict | None = None,
          trust_remote_code: bool = False):
    """Perplexity on ``ppl`` after removing 1..max_remove layers (or each of ``counts``), per metric/strategy."""
    given, tokenizer, calibration = _given(model, tokenizer, data)
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    options = dict(task_options or {})
    recipe = Recipe.for_command("sweep", _model_spec(model), calibration={
        "data": _data_spec(data), "samples": samples, "seq_len": seq_len, "batch_size": batch_size, "seed": seed,
        "text_field": text_field}, selection={"protect_first": protect_first, "protect_last": protect_last,
                                              "laco": laco},
        sweep={"metrics": list(metrics), "strategies": list(strategies), "max_remove": max_remove,
               "counts": list(counts) if counts is not None else None},
        evaluation={"ppl": ppl, "ppl_seq_len": ppl_seq_len, "ppl_max_tokens": ppl_max_tokens,
                    "tasks": list(tasks) if tasks else None, "limit": options.get("limit"),
                    "data_dir": options.get("data_dir")},
        runtime={"dtype": dtype, "device": device, "trust_remote_code": trust_remote_code})
    return execute_recipe(recipe, given, tokenizer, calibration=calibration, progress=progress).result


def heads(model, tokenizer=None, *, data: str | CalibrationSet = "builtin", samples: int = 16, seq_len: int = 128,
          batch_size: int = 8, seed: int = 0, text_field: str = "text", metrics: Sequence[str] = ("loss", "oproj-norm"),
          units: Sequence[str] = ("group", "query"), dtype: str = "float32", device: str = "cpu",
          progress: bool = True):
    """Attention head / KV-group importance and pattern statistics. Returns (HeadReport, LoadedModel)."""
    given, tokenizer, calibration = _given(model, tokenizer, data)
    recipe = Recipe.for_command("heads", _model_spec(model), calibration={
        "data": _data_spec(data), "samples": samples, "seq_len": seq_len, "batch_size": batch_size, "seed": seed,
        "text_field": text_field}, heads={"metrics": list(metrics), "units": list(units)},
        runtime={"dtype": dtype, "device": device})
    state = execute_recipe(recipe, given, tokenizer, calibration=calibration, progress=progress)
    return state.result, state.loaded


def repair(pruned_dir: str | Path, repair: RepairRecipe, *, out: str | Path | None = None, overwrite: bool = False,
           calibration=None, eval_ppl: str | None = None, ppl_seq_len: int = 512, ppl_max_tokens: int = 40_000,
           dtype: str = "float32", device: str = "cpu", command: str | None = None,
           progress: bool = True) -> PruneResult:
    """Repair the checkpoint in ``pruned_dir`` (a depthprune output) and save it to ``out`` (when given).

    ``linear`` and ``distill`` need the dense model: it is loaded from the source recorded in the output's
    ``depthprune.json``, with the recorded calibration unless ``calibration`` (a CalibrationRecipe) is given.
    """
    sections: dict = {"repair": repair.model_dump(mode="json"),
                      "evaluation": {"ppl": eval_ppl, "ppl_seq_len": ppl_seq_len, "ppl_max_tokens": ppl_max_tokens},
                      "output": {"path": str(out) if out is not None else None, "overwrite": overwrite},
                      "runtime": {"dtype": dtype, "device": device}}
    if calibration is not None:
        sections["calibration"] = calibration.model_dump(mode="json")
    recipe = Recipe.for_command("repair", str(pruned_dir), **sections)
    state = execute_recipe(recipe, command=command, progress=progress)
    return _prune_result(state)


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


__all__ = ["PruneResult", "as_loaded", "evaluate_perplexity", "execute_recipe", "heads", "prune", "repair", "run",
           "score", "sweep"]
