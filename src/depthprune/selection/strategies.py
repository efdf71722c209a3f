"""Importance metrics by name and the strategies that turn them into a set of layers to remove.

Strategies (every layer number is 0-based, original numbering; protection always refers to the
original first/last layers):

* ``one-shot``: score once, remove the ``n`` least important layers (ShortGPT).
* ``iterative``: remove the least important layer, re-score the pruned model (a weight-sharing
  pruned view, no copy), repeat ``n`` times. With ``ppl`` this *is* greedy-ppl and is computed so.
* ``block``: remove the best contiguous run of ``n`` layers (every start's block score is kept in
  ``details["block_scores"]``, which is what the choice was made on). With ``angular``/``angular-all`` the
  block whose input and output are closest in angle (Gromov et al. 2024); with ``bi`` or
  ``relative-magnitude`` the block with the smallest *sum* of per-layer scores (additive, cheap,
  from the same one pass; the angular metric already covers "distance between block input and output").
* ``greedy-ppl``: SLEB-style greedy removal by calibration loss with cached activations
  (see :mod:`depthprune.loss_metrics`).
* ``laco``: LaCo layer collapse: runs of consecutive layers are merged into their first layer
  (parameter differences added), kept where the final hidden states stay similar (see
  :mod:`depthprune.merging.laco`). Its metric is ``similarity`` (no per-layer scores); its
  Selection carries the merges in ``details["merges"]``, which :func:`apply_selection` applies.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Sequence

from torch import nn

from depthprune.arch.layout import layout
from depthprune.io.data import CalibrationSet
from depthprune.errors import DepthpruneError
from depthprune.importance.metrics import ALL_METRICS, LOSS_METRICS, STREAMING_METRICS, AngularDistance, check_metric, make_metric
from depthprune.importance.scores import MetricScores, compute_scores
from depthprune.selection.greedy import greedy_ppl
from depthprune.selection.laco import LacoSettings, apply_merges, laco as laco_search, merged_copy
from depthprune.selection.counts import protected_layers, select_lowest
from depthprune.surgery.in_memory import pruned_copy, pruned_view, remove_layers

log = logging.getLogger(__name__)

STRATEGIES = ("one-shot", "iterative", "block", "greedy-ppl", "laco")
BLOCK_METRICS = ("angular", "angular-all", "bi", "relative-magnitude")
DEFAULT_METRIC = {"one-shot": "bi", "iterative": "bi", "block": "angular", "greedy-ppl": "ppl", "laco": "similarity"}


def resolve(metric: str | None, strategy: str) -> str:
    """The metric to use with ``strategy`` (its default if None); a clear error for a bad combination."""
    if strategy not in STRATEGIES:
        raise DepthpruneError(f"unknown strategy '{strategy}': choose one of {', '.join(STRATEGIES)}")
    if metric is None:
        return DEFAULT_METRIC[strategy]
    if strategy == "laco":
        if metric != "similarity":
            raise DepthpruneError(f"strategy 'laco' picks layers by its own hidden-state similarity check; "
                                  f"drop --metric {metric}")
        return metric
    check_metric(metric)
    if strategy == "block" and metric not in BLOCK_METRICS:
        raise DepthpruneError(f"strategy 'block' needs a metric that scores contiguous blocks "
                              f"({', '.join(BLOCK_METRICS)}), not '{metric}'")
    if strategy == "greedy-ppl" and metric != "ppl":
        raise DepthpruneError(f"strategy 'greedy-ppl' ranks layers by calibration loss itself; "
                              f"drop --metric {metric} or use --metric ppl")
    return metric


@dataclass
class Selection:
    """Which layers go for one removal count (0-based, original numbering)."""

    metric: str
    strategy: str
    n: int
    removed: list[int]
    order: list[int] = field(default_factory=list)  # removal order where the strategy has one
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def best_block(block_scores: Sequence[float], n: int, total: int, protected: set[int]) -> int:
    """Start of the lowest-scoring contiguous block of ``n`` layers avoiding ``protected`` (ties: lower start)."""
    starts = [s for s in range(total - n + 1) if not protected.intersection(range(s, s + n))]
    if not starts:
        raise DepthpruneError(f"no contiguous block of {n} layers avoids the protected layers; "
                              "lower --protect-first/--protect-last or remove fewer layers")
    return min(starts, key=lambda s: (block_scores[s], s))


def _check_count(n: int, total: int, protected: set[int], protect_first: int, protect_last: int) -> None:
    if n < 1 or n >= total:
        raise DepthpruneError(f"cannot remove {n} layers from a {total}-layer model: choose 1..{total - 1}")
    if n > total - len(protected):
        raise DepthpruneError(f"cannot remove {n} layers: only {total - len(protected)} of {total} are not protected "
                              f"(--protect-first {protect_first}, --protect-last {protect_last})")


def plan(model: nn.Module, calibration: CalibrationSet, counts: Sequence[int], *, metric: str | None = None,
         strategy: str = "one-shot", protect_first: int = 0, protect_last: int = 0, batch_size: int = 8,
         seed: int = 0, precomputed: dict[str, MetricScores] | None = None,
         progress: bool = True, laco=None) -> tuple[dict[int, Selection], MetricScores | None]:
    """Removal sets for several counts at once (one scoring for one-shot/block, one run to max(counts)
    for iterative/greedy-ppl, whose results are nested). Returns ({n: Selection}, first-round scores)."""
    metric = resolve(metric, strategy)
    counts = sorted(set(int(c) for c in counts))
    total = len(layout(model).layers(model))
    protected = protected_layers(total, protect_first, protect_last)
    for n in counts:
        _check_count(n, total, protected, protect_first, protect_last)
    precomputed = precomputed or {}
    result: dict[int, Selection] = {}

    if strategy == "laco":  # laco: settings (LacoSettings or "C=..,T=.." string); merges searched per count
        settings = laco if isinstance(laco, LacoSettings) else LacoSettings.parse(laco)
        settings.lowest = max(settings.lowest, protect_first)
        for n in counts:
            r = laco_search(model, calibration, n, settings, batch_size=batch_size, protect_last=protect_last,
                            progress=progress)
            result[n] = Selection(metric, strategy, n, r.removed,
                                  details={"merges": r.merges, "trials": r.trials, "laco_settings": r.settings})
        return result, None

    if strategy == "greedy-ppl" or (strategy == "iterative" and metric == "ppl"):
        g = greedy_ppl(model, calibration, max(counts), protect_first=protect_first, protect_last=protect_last,
                       batch_size=batch_size, progress=progress)
        for n in counts:
            result[n] = Selection(metric, strategy, n, sorted(g.order[:n]), g.order[:n],
                                  {"calibration_nll_after_step": g.losses[:n], "dense_calibration_nll": g.dense_loss})
        return result, MetricScores("ppl", g.first_step_ppl, tokens=int(calibration.attention_mask.sum()))

    if strategy == "iterative":
        order: list[int] = []
        first: MetricScores | None = None
        for step in range(max(counts)):
            kept = [i for i in range(total) if i not in set(order)]
            if step == 0 and metric in precomputed:
                current = precomputed[metric]
            else:
                with pruned_view(model, order):
                    current = compute_scores(model, calibration, [metric], batch_size=batch_size,
                                             seed=seed + step, progress=progress)[metric]
            if step == 0:
                first = current
            by_original = {kept[i]: s for i, s in enumerate(current.scores)}
            candidates = [i for i in kept if i not in protected]
            pick = min(candidates, key=lambda i: (by_original[i], i))
            order.append(pick)
            log.info("iterative %s step %d: removed layer %d", metric, step + 1, pick)
        for n in counts:
            result[n] = Selection(metric, strategy, n, sorted(order[:n]), order[:n])
        return result, first

    if strategy == "block" and metric.startswith("angular"):
        have = precomputed.get(metric)
        if have is None or have.blocks is None or not set(counts) <= set(have.blocks):
            have = _angular_blocks(model, calibration, metric, counts, batch_size, progress)
        for n in counts:
            start = best_block(have.blocks[n], n, total, protected)
            result[n] = Selection(metric, strategy, n, list(range(start, start + n)),
                                  details={"block_start": start, "block_score": have.blocks[n][start],
                                           "block_scores": list(have.blocks[n])})
        return result, have

    scores = precomputed.get(metric) or compute_scores(model, calibration, [metric], batch_size=batch_size,
                                                       seed=seed, progress=progress)[metric]
    for n in counts:
        result[n] = choose_from_scores(scores.scores, n, metric=metric, strategy=strategy,
                                       protect_first=protect_first, protect_last=protect_last)
    return result, scores


def choose_from_scores(scores: Sequence[float], n: int, *, metric: str, strategy: str = "one-shot",
                       protect_first: int = 0, protect_last: int = 0) -> Selection:
    """The ``n`` layers one-shot (lowest scores) or block (lowest sum over a contiguous run) removes, from plain
    per-layer scores: no model needed (a scores file, layer-streamed scores)."""
    total = len(scores)
    protected = protected_layers(total, protect_first, protect_last)
    _check_count(n, total, protected, protect_first, protect_last)
    if strategy == "block":  # bi / relative-magnitude: smallest sum over the block
        sums = [sum(scores[s:s + n]) for s in range(total - n + 1)]
        start = best_block(sums, n, total, protected)
        return Selection(metric, strategy, n, list(range(start, start + n)),
                         details={"block_start": start, "block_score": sums[start], "block_scores": sums})
    if strategy != "one-shot":
        raise DepthpruneError(f"strategy '{strategy}' scores the model itself; per-layer scores drive one-shot or block")
    removed = select_lowest(scores, n, protect_first=protect_first, protect_last=protect_last)
    return Selection(metric, strategy, n, removed, sorted(removed, key=lambda i: (scores[i], i)))


def _angular_blocks(model, calibration, metric, counts, batch_size, progress) -> MetricScores:
    return compute_scores(model, calibration, [metric], batch_size=batch_size, block_sizes=counts,
                          progress=progress)[metric]


def apply_selection(model: nn.Module, selection: Selection, *, in_place: bool = False) -> nn.Module:
    """The pruned model for ``selection``: layers removed, or for ``laco`` merged then removed."""
    if selection.strategy == "laco":
        merges = selection.details["merges"]
        return apply_merges(model, merges) if in_place else merged_copy(model, merges)
    return remove_layers(model, selection.removed) if in_place else pruned_copy(model, selection.removed)


def select(model: nn.Module, calibration: CalibrationSet, n: int, **kwargs) -> tuple[Selection, MetricScores | None]:
    """Removal set for one count ``n`` (see :func:`plan` for the keyword arguments)."""
    chosen, scores = plan(model, calibration, [n], **kwargs)
    return chosen[n], scores


__all__ = ["ALL_METRICS", "BLOCK_METRICS", "LOSS_METRICS", "MetricScores", "STRATEGIES", "Selection",
           "apply_selection", "best_block", "choose_from_scores",
           "compute_scores", "plan", "resolve", "select"]
