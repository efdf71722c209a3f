"""The runner: the plan's stages, in order, over one run state.

Every command (prune, score, sweep, heads, repair, eval, bench, report) is a plan over the same stages
(:mod:`depthprune.pipeline.stages`), so a check or guarantee added to a stage holds for every command that uses it.
A stage is looked up as ``(name, command, executor)``, then ``(name, command)``, then ``name``: a command or an
executor that needs its own variant of a stage registers it under the longer key.
"""

from __future__ import annotations

import contextlib
import logging
import time

from depthprune.errors import DepthpruneError
from depthprune.importance.distributed import is_main_process
from depthprune.pipeline.plan import Plan
from depthprune.pipeline.stages import STAGES
from depthprune.pipeline.state import RunState

log = logging.getLogger(__name__)

# the timing each stage's wall time is recorded under (evaluation and writing time themselves)
TIMING_KEYS = {"load": "loading", "stream": "loading", "load-repair": "loading", "calibrate": "calibration",
               "score": "scoring", "select": "scoring", "cut": "surgery", "repair": "repair",
               "quantize": "quantization", "bench": "bench", "sweep": "sweep", "head-score": "scoring",
               "head-cut": "surgery", "search": "search"}


def stage_function(name: str, command: str, executor: str):
    for key in ((name, command, executor), (name, command), name):
        if key in STAGES:
            return STAGES[key]
    raise DepthpruneError(f"no stage '{name}' for {command} via {executor}")  # pragma: no cover - plans are tested


def execute(plan: Plan, state: RunState | None = None, **given) -> RunState:
    """Run ``plan``'s stages in order; returns the final state. ``given`` fills the state's ``given_*`` fields."""
    state = state if state is not None else RunState(plan, **given)
    if state.given_calibration is not None:
        state.calibration = state.given_calibration
    state.extra["main_process"] = is_main_process()
    state.extra.setdefault("started", time.perf_counter())  # --budget counts from here
    if state.num_layers is None:  # known from the config or GGUF header; stages that load a model set it again
        state.num_layers = plan.source.num_layers
    log.info("%s", plan.describe())
    for name in plan.stages:
        function = stage_function(name, plan.command, plan.executor)
        key = TIMING_KEYS.get(name)
        with state.timed(key) if key else contextlib.nullcontext():
            function(state)
    return state


__all__ = ["TIMING_KEYS", "execute", "stage_function"]
