"""The one run state that every stage reads and extends (plain data; no stage keeps anything of its own)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from depthprune.io.models import declared_dtype
from depthprune.pipeline.plan import Plan


@dataclass
class RunState:
    """What a run has so far. Stages fill it in the plan's order; the writer turns it into files."""

    plan: Plan
    progress: bool = True
    command_line: str | None = None  # the command line that started the run (None: the Python API)

    # given by a Python caller instead of being loaded/built
    given_model: Any = None
    given_tokenizer: Any = None
    given_calibration: Any = None
    given_scores: Any = None          # a ScoreReport

    # load
    loaded: Any = None                # LoadedModel: the dense model (repair: the pruned input)
    dense: Any = None                 # repair: the dense model; prune: the dense model kept beside the pruned one
    streamed: Any = None              # StreamedModel (layer-streamed executor)
    tokenizer: Any = None
    num_layers: int | None = None

    # calibrate, score, select
    calibration: Any = None           # CalibrationSet
    scores: Any = None                # MetricScores of the chosen metric (first round)
    scale: dict | None = None         # layer streaming / torchrun statistics
    selection: Any = None             # the strategy's Selection (laco merges in details)
    removed: list[int] | None = None
    order: list[int] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    # cut, repair, quantize
    pruned: Any = None                # the pruned model in memory
    params_before: int | None = None
    repair: dict | None = None

    # evaluate, bench
    perplexity: dict = field(default_factory=dict)
    evals: dict | None = None         # {"dense": lm-eval result, "pruned": ...}
    bench: Any = None                 # BenchComparison / BenchResult

    # command-specific results (the sweep table, the head report, ...)
    result: Any = None
    extra: dict = field(default_factory=dict)

    # write
    report: Any = None                # PruneReport / ScoreReport / ... as written
    written: list[Path] = field(default_factory=list)
    readback: dict | None = None
    timings: dict = field(default_factory=dict)

    @property
    def recipe(self):
        return self.plan.recipe

    @property
    def model(self):
        """The model the stages work on: the loaded dense model (or the given one)."""
        return self.loaded.model if self.loaded is not None else None

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[name]`` (seconds)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 3)


def source_info(state: RunState) -> dict:
    """Where the weights came from, for the saved checkpoint's dtype and the model card's lineage."""
    src = state.plan.source
    info = {"kind": src.kind}
    loaded = state.loaded
    if loaded is not None:
        info.update({k: loaded.info.get(k) for k in ("kind", "source_dtype", "upstream", "description")
                     if loaded.info.get(k) is not None})
    if "source_dtype" not in info:
        model = state.model
        declared = src.source_dtype or (declared_dtype(model.config) if model is not None else None)
        if declared is None and model is not None:
            declared = str(next(model.parameters()).dtype).removeprefix("torch.")
        if declared is not None:
            info["source_dtype"] = declared
    if info.get("kind") == "hub":
        info["hub_id"] = state.recipe.model
    return info


__all__ = ["source_info", "RunState"]
