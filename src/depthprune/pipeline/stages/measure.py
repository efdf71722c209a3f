"""Stages that measure: perplexity and task accuracy (dense, unrepaired, pruned), speed, the sweep, head scores.

Every measurement of a dense and a pruned model runs in the same process on the same text, so the two numbers
are comparable; perplexity after a repair is on the evaluation text, which the planner keeps apart from the
calibration and repair text only by the user's choice (the record says which texts were used).
"""

from __future__ import annotations

import logging

from depthprune.evaluation.lmeval import evaluate_tasks
from depthprune.evaluation.perplexity import perplexity
from depthprune.evaluation.speed import benchmark, compare
from depthprune.importance.heads import head_report
from depthprune.io.data import iter_texts, sequential_windows
from depthprune.io.loading import as_loaded
from depthprune.pipeline.heads import remove_lowest_heads
from depthprune.pipeline.state import RunState
from depthprune.pipeline.sweep import run_sweep, sweep_counts

log = logging.getLogger(__name__)


def _ppl(state: RunState, model) -> dict:
    ev = state.recipe.evaluation
    batch = ev.batch_size if state.recipe.command == "eval" else 1
    return perplexity(model, state.tokenizer, ev.ppl, seq_len=ev.ppl_seq_len, max_tokens=ev.ppl_max_tokens,
                      batch_size=batch, text_field=ev.text_field, progress=state.progress).to_json()


def _tasks(state: RunState, model, role: str) -> dict:
    rec = state.recipe
    ev = rec.evaluation
    batch = ev.batch_size if rec.command == "eval" else rec.calibration.batch_size
    return evaluate_tasks(model, state.tokenizer, ev.tasks, model_name=state.loaded.source if state.loaded else
                          rec.model, role=role, command=state.command_line,
                          trust_remote_code=rec.runtime.trust_remote_code, **ev.task_options(batch))


def _measure(state: RunState, model, ppl_key: str, role: str) -> None:
    """The perplexity and/or task accuracy the recipe asks for, of ``model``, recorded under ``ppl_key``/``role``."""
    ev = state.recipe.evaluation
    if ev.ppl is not None:
        with state.timed("perplexity"):
            state.perplexity[ppl_key] = _ppl(state, model)
    if ev.tasks is not None:
        with state.timed("tasks"):
            state.evals = {**(state.evals or {}), role: _tasks(state, model, role)}


def evaluate_dense(state: RunState) -> None:
    _measure(state, state.model, "dense", "dense")


def evaluate_unrepaired(state: RunState) -> None:
    with state.timed("perplexity"):
        state.perplexity["unrepaired"] = _ppl(state, state.pruned)


def evaluate_pruned(state: RunState) -> None:
    rec = state.recipe
    _measure(state, state.pruned, "pruned", "pruned")
    if rec.evaluation.ppl is not None and state.repair is not None and rec.quantization.method is None:
        state.repair["heldout"] = heldout_verdict(state.perplexity)  # quantized: not comparable


def heldout_verdict(ppl: dict) -> dict | None:
    """Held-out perplexity before vs after the repair; a warning when the repair did not lower it (the saved model
    is still the repaired one the user asked for)."""
    before, after = ppl.get("unrepaired"), ppl.get("pruned")
    if not before or not after:
        return None
    verdict = {"unrepaired_ppl": before["ppl"], "repaired_ppl": after["ppl"], "improved": after["ppl"] < before["ppl"]}
    if not verdict["improved"]:
        log.warning("the repair did not lower held-out perplexity (%.3f unrepaired, %.3f repaired); the output holds "
                    "the repaired model as asked: compare another --repair method or objective, or calibration text "
                    "closer to the evaluated text", before["ppl"], after["ppl"])
    return verdict


def evaluate(state: RunState) -> None:
    """``depthprune eval``: perplexity and/or task accuracy of one model."""
    ev = state.recipe.evaluation
    role = state.plan.outputs[0].path.name.split("-", 1)[0] if state.plan.outputs else (ev.role or "dense")
    _measure(state, state.model, "model", role)


def bench_pruned(state: RunState) -> None:
    """``prune --bench``: the dense and the pruned model measured side by side (interleaved runs)."""
    rec = state.recipe
    source = state.loaded.source
    comparison = compare(state.dense, state.pruned, labels=("dense", "pruned"),
                         names=(source, f"{source} minus layers {state.removed}"), progress=state.progress,
                         **rec.bench.options())
    comparison.command = state.command_line
    state.bench = comparison


def bench(state: RunState) -> None:
    """``depthprune bench``: one model, or the model against a baseline side by side."""
    rec = state.recipe
    b, rt = rec.bench, rec.runtime
    options = dict(b.options(), dtype=rt.dtype, device=rt.device, progress=state.progress,
                   trust_remote_code=rt.trust_remote_code)
    if b.compare is None:
        result = benchmark(state.loaded, **options)
        state.bench = result
        return
    baseline = as_loaded(b.compare, dtype=rt.dtype, device=rt.device, trust_remote_code=rt.trust_remote_code)
    labels = tuple(b.labels)
    comparison = compare(baseline, state.loaded, labels=labels, names=(b.compare, rec.model), **options)
    comparison.command = state.command_line
    state.bench = comparison


def sweep(state: RunState) -> None:
    """Perplexity (and task accuracy) after removing each count of layers, for every metric/strategy line."""
    rec = state.recipe
    sw, ev, cal, sel = rec.sweep, rec.evaluation, rec.calibration, rec.selection
    counts = sweep_counts(state.num_layers, sw.max_remove, sw.counts)
    windows = sequential_windows(state.tokenizer, iter_texts(ev.ppl, text_field=ev.text_field), seq_len=ev.ppl_seq_len,
                                 max_tokens=ev.ppl_max_tokens, source=ev.ppl)
    task_options = ev.task_options(cal.batch_size) if ev.tasks is not None else None
    result = run_sweep(state.model, state.tokenizer, state.calibration, windows, metrics=sw.metrics,
                       strategies=sw.strategies, counts=counts, protect_first=sel.protect_first,
                       protect_last=sel.protect_last, batch_size=cal.batch_size, seed=cal.seed,
                       source=state.loaded.source, progress=state.progress, laco=sel.laco, tasks=ev.tasks,
                       task_options=task_options)
    result.model_type = state.loaded.info.get("model_type") or result.model_type
    state.result = result


def head_score(state: RunState) -> None:
    rec = state.recipe
    h, cal = rec.heads, rec.calibration
    state.result = head_report(state.model, state.calibration, metrics=h.metrics, units=h.units,
                               batch_size=cal.batch_size, source=state.loaded.source, progress=state.progress)


def head_cut(state: RunState) -> None:
    rec = state.recipe
    h, ev = rec.heads, rec.evaluation
    removal, pruned = remove_lowest_heads(state.model, state.tokenizer, state.result, per_layer=h.remove_per_layer,
                                          unit=h.remove_unit, select_by=h.select_by, ppl=ev.ppl,
                                          ppl_seq_len=ev.ppl_seq_len, ppl_max_tokens=ev.ppl_max_tokens,
                                          progress=state.progress)
    state.extra["head_removal"] = removal
    state.pruned = pruned


STAGES = {"evaluate-dense": evaluate_dense, "evaluate-unrepaired": evaluate_unrepaired,
          "evaluate-pruned": evaluate_pruned, "evaluate": evaluate, ("bench", "prune"): bench_pruned,
          "bench": bench, "sweep": sweep, "head-score": head_score, "head-cut": head_cut}

__all__ = ["STAGES", "heldout_verdict"]
