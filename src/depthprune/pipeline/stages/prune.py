"""Stages that decide and make the cut: score, select, cut, repair, quantize.

Scoring has one implementation per place the weights live: in memory (any metric, any strategy), and one decoder
layer at a time (streaming metrics; :mod:`depthprune.importance.streamed`); under ``torchrun`` either one scores its
share of the calibration samples and the metric sums are all-reduced (:mod:`depthprune.importance.distributed`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from depthprune.arch.layout import parameter_count
from depthprune.arch.skeleton import meta_skeleton, structure_mismatches
from depthprune.errors import DepthpruneError
from depthprune.importance import distributed
from depthprune.importance.metrics import make_metric
from depthprune.importance.scores import MetricScores, compute_scores
from depthprune.importance.scoring import run_layer_metrics
from depthprune.importance.streamed import activation_budget_bytes, run_layer_metrics_streamed
from depthprune.io.data import batch_count, build_calibration
from depthprune.io.formats.hf import resolve_save_dtype
from depthprune.pipeline.state import RunState, source_info
from depthprune.quantization.weights import quantize_model
from depthprune.reporting.records import ScoreReport
from depthprune.repair.linear import (fit_linear_maps, fit_linear_maps_streamed, fold_into_streamed_layers,
                                     fold_linear_maps)
from depthprune.repair.lora import lora_repair, repair_data
from depthprune.selection.counts import ascending_order, removal_count
from depthprune.selection.strategies import apply_selection, choose_from_scores, select
from depthprune.surgery.gguf_cut import check_gguf_removal
from depthprune.surgery.in_memory import pruned_copy, remove_layers, structure_refusal

log = logging.getLogger(__name__)

SCORED_BY_STRATEGY = ("greedy-ppl", "laco")  # these strategies measure the model themselves while choosing


# --------------------------------------------------------------------------------------------- score


def removal_count_of(state: RunState) -> int:
    count = state.plan.removal_count
    if count is None:  # the layer count was only known once loaded
        sel = state.recipe.selection
        count = removal_count(state.num_layers, remove=sel.remove, ratio=sel.ratio)
    return count


def score(state: RunState) -> None:
    """Per-layer scores of the plan's metric, on the model in memory (or streamed / sharded: see the module doc)."""
    rec, plan = state.recipe, state.plan
    sel, cal = rec.selection, rec.calibration
    metric = plan.metric
    if plan.executor == "layer-streamed" or plan.distributed:
        _score_streaming(state, metric)
        return
    if rec.command == "prune" and (sel.strategy in SCORED_BY_STRATEGY
                                   or (sel.strategy == "iterative" and metric == "ppl")):
        return  # chosen by the strategy's own loss measurements in the select stage
    if rec.command == "prune":
        block_sizes = (removal_count_of(state),) if sel.strategy == "block" and metric.startswith("angular") else (1,)
    else:
        block_sizes = tuple(sel.block_sizes or (1,))
    state.scores = compute_scores(state.model, state.calibration, [metric], batch_size=cal.batch_size, seed=cal.seed,
                                  block_sizes=block_sizes, progress=state.progress)[metric]
    if rec.command == "score" and len(block_sizes) < 2:
        state.scores.blocks = {}  # block distances only when more sizes than single layers were asked for


def _score_streaming(state: RunState, metric: str) -> None:
    rec = state.recipe
    cal, rt = rec.calibration, rec.runtime
    info = distributed.init(rt.device) if state.plan.distributed else None
    device = distributed.local_device(rt.device)
    calibration = state.calibration
    part, samples = (calibration, [len(calibration)]) if info is None else \
        distributed.shard(calibration, info.rank, info.world_size)
    n = state.num_layers
    metrics = [make_metric(metric, n, seed=cal.seed)]
    scale: dict = {"offload": "layers" if state.streamed is not None else "none"}
    if state.streamed is not None:
        stats = run_layer_metrics_streamed(state.streamed, part, metrics, batch_size=cal.batch_size,
                                           activation_budget_bytes=activation_budget_bytes(
                                               state.streamed, rt.activation_budget_mb),
                                           progress=state.progress)
        local_tokens = stats.tokens
        scale["stream"] = stats.to_json()
    else:
        local_tokens = run_layer_metrics(state.model, part, metrics, batch_size=cal.batch_size,
                                         progress=state.progress)
    tokens = local_tokens
    if info is not None:
        distributed.all_reduce_metrics(metrics, device)
        info.samples_per_rank = samples
        info.batches_per_rank = [batch_count(k, cal.batch_size) for k in samples]  # each rank batches its own share
        info.tokens_per_rank = distributed.gather_counts(local_tokens, device)
        scale["distributed"] = info.to_json()
        tokens = sum(info.tokens_per_rank)
    if tokens != calibration.num_tokens:  # pragma: no cover - a shard scored twice or not at all
        raise RuntimeError(f"scored {tokens} tokens but the calibration set has {calibration.num_tokens}")
    state.scores = MetricScores(metric, [float(v) for v in metrics[0].result()], tokens=tokens)
    state.scale = scale


# --------------------------------------------------------------------------------------------- select


def select_layers(state: RunState) -> None:
    """Which layers go: given, from a scores file, from streamed scores, or by the strategy on the model."""
    rec, plan = state.recipe, state.plan
    sel, cal = rec.selection, rec.calibration
    if sel.layers is not None:
        state.removed, state.order, state.details = sorted(sel.layers), list(sel.layers), {"given": True}
    elif state.given_scores is not None or sel.scores is not None:
        given = state.given_scores if state.given_scores is not None else read_scores(sel.scores)
        if state.num_layers is not None and given.num_layers != state.num_layers:
            raise DepthpruneError(f"the given scores cover {given.num_layers} layers but the model has "
                                  f"{state.num_layers}")
        if given.metric != plan.metric and not (sel.metric is None and sel.strategy in ("one-shot", "block")):
            raise DepthpruneError(f"the given scores are '{given.metric}' scores but metric '{plan.metric}' was "
                                  "asked for")
        state.scores = MetricScores(given.metric, list(given.scores), tokens=given.tokens)
        state.details["scores_calibration"] = dict(given.calibration)
        state.num_layers = state.num_layers or given.num_layers
        _choose_from(state, given.metric)
    elif state.model is None:  # layer-streamed scores
        _choose_from(state, plan.metric)
    else:
        chosen, first = select(state.model, state.calibration, removal_count_of(state), metric=plan.metric,
                               strategy=sel.strategy, protect_first=sel.protect_first,
                               protect_last=sel.protect_last, batch_size=cal.batch_size, seed=cal.seed,
                               precomputed={plan.metric: state.scores} if state.scores is not None else None,
                               progress=state.progress, laco=sel.laco)
        state.selection = chosen
        state.scores = state.scores or first
        state.removed = chosen.removed
        state.order = chosen.order or _by_score(chosen.removed, first)
        state.details = dict(chosen.details)
    _check_removal(state)


def _by_score(removed: list[int], scores: MetricScores | None) -> list[int]:
    """One-shot removes all at once; its order is the chosen layers from least to most important."""
    if scores is None or not scores.scores:
        return list(removed)
    return sorted(removed, key=lambda i: (scores.scores[i], i))


def _choose_from(state: RunState, metric: str) -> None:
    sel = state.recipe.selection
    chosen = choose_from_scores(state.scores.scores, removal_count_of(state), metric=metric, strategy=sel.strategy,
                                protect_first=sel.protect_first, protect_last=sel.protect_last)
    state.selection = chosen
    state.removed, state.order, state.details = chosen.removed, chosen.order, {**state.details, **chosen.details}


def _check_removal(state: RunState) -> None:
    """The chosen removal against the family's index rules and, for a GGUF cut, the GGUF's own index rules."""
    plan = state.plan
    original = state.model if state.model is not None else plan.source.config
    if original is not None and state.recipe.selection.layers is None:  # given layers: checked when planned/loaded
        reason = structure_refusal(original, state.removed, trust_remote_code=state.recipe.runtime.trust_remote_code)
        if reason:
            raise DepthpruneError(f"the {state.recipe.selection.strategy} selection {state.removed} cannot be saved: "
                                  f"{reason}")
    if plan.executor == "gguf-cut":
        check_gguf_removal(plan.source.gguf, state.removed)


def preview(state: RunState) -> None:
    """``score --strategy S --remove N``: which layers that strategy would remove (the model is not changed)."""
    sel, cal = state.recipe.selection, state.recipe.calibration
    if sel.strategy is None:
        return
    n = state.plan.removal_count
    if state.model is None:  # streamed: one-shot from the scores
        removed = choose_from_scores(state.scores.scores, n, metric=state.scores.metric,
                                     protect_first=sel.protect_first, protect_last=sel.protect_last).removed
        order = [i for i in ascending_order(state.scores.scores) if i in set(removed)]
        state.details = {"strategy": sel.strategy, "removed_layers": removed, "order": order}
        return
    chosen, _ = select(state.model, state.calibration, n, metric=state.plan.metric, strategy=sel.strategy,
                       protect_first=sel.protect_first, protect_last=sel.protect_last, batch_size=cal.batch_size,
                       seed=cal.seed, precomputed={state.plan.metric: state.scores}, progress=state.progress)
    state.details = {"strategy": sel.strategy, "removed_layers": chosen.removed, "order": chosen.order,
                     **chosen.details}


def read_scores(path: str | Path) -> ScoreReport:
    """A ScoreReport read back from a scores JSON written by ``depthprune score`` (one sentence when it is not)."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DepthpruneError(f"scores file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DepthpruneError(f"cannot read scores file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scores"), list) or not isinstance(data.get("metric"), str):
        raise DepthpruneError(f"{path} is not a scores file written by `depthprune score` (no metric/scores)")
    values = data["scores"]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
                             for v in values):
        raise DepthpruneError(f"scores file {path} holds no scores or scores that are not finite numbers")
    layers = data.get("num_layers", len(values))
    if layers != len(values):
        raise DepthpruneError(f"scores file {path} says {layers} layers but holds {len(values)} scores")
    calibration = data.get("calibration") if isinstance(data.get("calibration"), dict) else {}
    tokens = data.get("tokens") if isinstance(data.get("tokens"), int) else 0
    return ScoreReport(model=str(data.get("model", "")), model_type=data.get("model_type"), metric=data["metric"],
                       num_layers=len(values), scores=[float(v) for v in values],
                       removal_order=ascending_order(values), tokens=tokens, calibration=calibration)


# --------------------------------------------------------------------------------------------- cut


def keeps_dense(state: RunState) -> bool:
    """Whether the dense model must outlive the cut (side-by-side speed, repair's activations and teacher, or a
    caller's model that must stay untouched)."""
    rec = state.recipe
    return bool(rec.evaluation.bench or rec.repair.methods
                or (state.given_model is not None and not state.extra.get("in_place")))


def cut(state: RunState) -> None:
    """The pruned model in memory (layers removed; LaCo: merged, then removed), checked against a rebuild of its
    own config (each kept layer must have the structure of the layer it came from)."""
    model = state.model
    state.params_before = parameter_count(model)
    keep_dense = keeps_dense(state)
    if state.selection is not None and state.selection.strategy == "laco":
        state.pruned = apply_selection(model, state.selection, in_place=not keep_dense)
    else:
        state.pruned = pruned_copy(model, state.removed) if keep_dense else remove_layers(model, state.removed)
    state.dense = model if keep_dense else None
    check_kept_layers(state)


def check_kept_layers(state: RunState) -> None:
    """The pruned model against a rebuild of its own config: each kept layer must have the structure of the layer
    it came from (one sentence naming the first difference)."""
    kept = state.num_layers - len(set(state.removed))
    problems = structure_mismatches(state.pruned, meta_skeleton(state.pruned.config,
                                                                 state.recipe.runtime.trust_remote_code),
                                    list(range(kept)))
    if problems:
        raise DepthpruneError(f"removing layers {state.removed} would change the kept layers: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


# --------------------------------------------------------------------------------------------- repair, quantize


def repair(state: RunState) -> None:
    """Repair the pruned model in order (linear, then lora); the dense model is read, never changed."""
    rec = state.recipe
    rep, cal = rec.repair, rec.calibration
    if state.streamed is not None:
        _repair_streamed(state)
        return
    dense = state.dense
    report: dict = {"methods": list(rep.methods), "settings": rep.model_dump(mode="json")}
    if "linear" in rep.methods:
        if state.calibration is None:
            state.calibration = build_calibration(cal.data, state.tokenizer, samples=cal.samples, seq_len=cal.seq_len,
                                                  seed=cal.seed, text_field=cal.text_field, model=dense,
                                                  batch_size=cal.batch_size, progress=state.progress)
        maps, linear = fit_linear_maps(dense, state.calibration, state.removed, objective=rep.objective,
                                       ridge=rep.ridge, batch_size=cal.batch_size, cosine_steps=rep.cosine_steps,
                                       progress=state.progress)
        fold_linear_maps(state.pruned, maps, state.removed, state.num_layers)
        report["linear"] = linear.to_json()
    if "lora" in rep.methods:
        train, held = repair_data(state.tokenizer, rep.data, tokens=rep.tokens, seq_len=rep.seq_len, seed=rep.seed)
        state.pruned, lora = lora_repair(state.pruned, train, held, teacher=dense if rep.distill else None,
                                         rank=rep.rank, alpha=rep.alpha, lr=rep.lr, batch_size=rep.batch_size,
                                         eval_every=rep.eval_every, seed=rep.seed, progress=state.progress)
        report["lora"] = {**lora.to_json(), "data": dict(train.settings)}
    bad = [name for name, p in state.pruned.named_parameters() if not bool(p.detach().isfinite().all())]
    if bad:
        raise DepthpruneError(f"the repair produced non-finite weights ({bad[0]}{' and others' if len(bad) > 1 else ''}); "
                              "nothing was saved: lower --repair-lr or use another --repair method")
    state.repair = report


def _repair_streamed(state: RunState) -> None:
    """Linear repair of a layer-streamed model: the maps are fitted in one streamed pass of the dense layers up to
    the last removed one and folded into the kept source layers read once more; the write stage copies the rest of
    the checkpoint byte for byte and writes the folded tensors from these values."""
    rec = state.recipe
    rep, cal = rec.repair, rec.calibration
    maps, linear = fit_linear_maps_streamed(state.streamed, state.calibration, state.removed, ridge=rep.ridge,
                                            batch_size=cal.batch_size,
                                            activation_budget_bytes=activation_budget_bytes(
                                                state.streamed, rec.runtime.activation_budget_mb),
                                            progress=state.progress)
    replacements = fold_into_streamed_layers(state.streamed, maps)
    bad = [name for name, t in replacements.items() if not bool(t.float().isfinite().all())]
    if bad:
        raise DepthpruneError(f"the repair produced non-finite weights ({bad[0]}); nothing was saved: give "
                              "--repair-ridge a larger value")
    state.extra["replacements"] = replacements
    state.repair = {"methods": list(rep.methods), "settings": rep.model_dump(mode="json"), "linear": linear.to_json(),
                    "streamed": {"folded_tensors": sorted(replacements)}}


def quantize(state: RunState) -> None:
    """Weight-only quantization; the tensors it leaves as they are (embeddings, norms) keep the dtype the model
    came in, as an unquantized save would, not the compute dtype."""
    q = state.recipe.quantization
    dtype = resolve_save_dtype("auto", source_info(state).get("source_dtype"), state.pruned)
    state.pruned = quantize_model(state.pruned, q.method, group_size=q.group_size, dtype=dtype)
    state.extra["quantized_dtype"] = dtype


STAGES = {"score": score, "select": select_layers, "cut": cut, "repair": repair, "quantize": quantize,
          ("select", "score"): preview}

__all__ = ["STAGES", "check_kept_layers", "removal_count_of", "cut", "keeps_dense", "preview", "quantize", "read_scores", "repair", "score", "select_layers"]
