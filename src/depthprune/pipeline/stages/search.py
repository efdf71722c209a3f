"""The ``--auto`` stage: selection, cut and repair searched within the budget (:mod:`depthprune.pipeline.auto`).

It takes the place of score, select, cut and repair, and leaves the state as they would: the removed layers, the
pruned model (a plain model, the dense one untouched), the repair record, and the search itself for the record.
"""

from __future__ import annotations

import logging
import time

from depthprune.arch.layout import parameter_count, weight_bytes
from depthprune.importance.scores import MetricScores
from depthprune.pipeline.auto import search
from depthprune.pipeline.stages.prune import check_kept_layers, removal_count_of
from depthprune.pipeline.state import RunState
from depthprune.surgery.in_memory import structure_refusal

log = logging.getLogger(__name__)

SAVE_RESERVE_FLOOR = 2.0  # seconds always kept for writing and reading back the chosen model
# Writing, reading back and checking the chosen model: measured on 2 CPU cores, Gemma-3 270M (1.07 GB in float32)
# saved as bfloat16 in 6.5-14.8 s, SmolLM2-135M (0.54 GB) in 3.2 s. About twice what loading from a cached copy
# takes, and at most the model's bytes at this rate (a first load that dequantizes a GGUF takes far longer than a
# save).
SAVE_BYTES_PER_SECOND = 60e6


def auto_search(state: RunState) -> None:
    rec = state.recipe
    dense = state.model
    started = state.extra.get("started", time.perf_counter())
    reserve = SAVE_RESERVE_FLOOR + min(2.0 * state.timings.get("loading", 0.0), weight_bytes(dense) / SAVE_BYTES_PER_SECOND)
    result = search(dense, state.calibration, removal_count_of(state), rec, deadline=started + rec.search.budget_seconds,
                    reserve=reserve, progress=state.progress,
                    structure_ok=lambda removed: structure_refusal(
                        dense, removed, trust_remote_code=rec.runtime.trust_remote_code))
    chosen = result.chosen
    state.params_before = parameter_count(dense)
    state.scores = MetricScores("bi", result.scores, tokens=result.record["fit"]["tokens"])
    state.removed = sorted(chosen.removed)
    state.order = list(chosen.details.get("order") or chosen.removed)
    state.details = {"auto": {"selection": chosen.selection, "repair": chosen.repair,
                              "val_ppl": chosen.val_ppl}}
    state.pruned, state.dense = result.model, dense
    state.repair = result.repair
    state.extra["search"] = result.record
    state.extra["metric"] = {"bi one-shot": "bi", "angular block": "angular"}.get(chosen.selection,
                                                                                  "repaired-error")
    check_kept_layers(state)
    log.info("auto: chose %s with %s (validation ppl %.3f; dense %.3f)", chosen.selection, chosen.repair,
             chosen.val_ppl, result.record["dense"]["val_ppl"])


STAGES = {"search": auto_search}

__all__ = ["STAGES", "auto_search"]
