"""SLEB-style greedy layer removal by calibration loss, on the cached activations of
:class:`depthprune.importance.loss_metrics.CachedLayerRunner` (each candidate re-runs only the layers after it)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from torch import nn
from tqdm.auto import tqdm

from depthprune.errors import DepthpruneError
from depthprune.importance.loss_metrics import CachedLayerRunner
from depthprune.io.data import CalibrationSet
from depthprune.selection.counts import protected_layers

log = logging.getLogger(__name__)


@dataclass
class GreedyResult:
    order: list[int]            # removal order, 0-based original numbering
    losses: list[float]         # mean calibration NLL after each step
    first_step_ppl: list[float]  # calibration PPL with each single layer skipped (step 1)
    dense_loss: float


def greedy_ppl(model: nn.Module, calibration: CalibrationSet, n: int, *, protect_first: int = 0,
               protect_last: int = 0, batch_size: int = 8, progress: bool = True) -> GreedyResult:
    """SLEB-style greedy removal with cached activations: ``n`` steps, each removing the layer whose
    removal gives the lowest calibration loss (ties: lower index)."""
    runner = CachedLayerRunner(model, calibration, batch_size=batch_size, progress=progress)
    total = runner.num_layers
    protected = protected_layers(total, protect_first, protect_last)
    candidates = [i for i in range(total) if i not in protected]
    if n > len(candidates):
        raise DepthpruneError(f"cannot remove {n} layers: only {len(candidates)} of {total} are not protected "
                              f"(--protect-first {protect_first}, --protect-last {protect_last})")
    dense = runner.loss_without(None)
    order, losses, first = [], [], [float("nan")] * total
    for step in tqdm(range(n), desc="greedy-ppl", disable=not progress, unit="layer"):
        # step 1 also scores the protected layers, so the report has a full per-layer ppl profile
        pool = range(total) if step == 0 else [c for c in candidates if c not in runner.removed]
        trial = {c: runner.loss_without(c) for c in pool}
        if step == 0:
            first = [math.exp(trial[c]) for c in range(total)]
        best = min((c for c in trial if c not in protected), key=lambda c: (trial[c], c))
        runner.commit(best)
        order.append(best)
        losses.append(trial[best])
        log.info("greedy-ppl step %d: removed layer %d, calibration ppl %.3f", step + 1, best, math.exp(trial[best]))
    return GreedyResult(order, losses, first, dense)


__all__ = ["GreedyResult", "greedy_ppl"]
