"""``prune --auto --budget``: which layers go and which repair heals them, searched within a wall-time budget.

The calibration windows are split once: the last ``validation`` share of them (non-overlapping windows of the
user's text) is the **validation split**, and every fit (scores, block statistics, linear maps, LoRA) sees only
the other windows. Each candidate, a removal set with a repair, is judged by its perplexity on the validation
split, and the best is handed on as a plain model. Nothing here reads the evaluation text (``--eval-ppl``).

The search, cheapest first, each step only when its measured cost fits what is left of the budget:

1. one pass of the dense model over the fit windows gives the BI scores, the angular distance of every block of
   ``n`` layers and, for every such block, the normal equations of its linear map;
2. removal sets: BI one-shot (ShortGPT), the best angular block, and the blocks whose successor input is best
   reproduced *after* the linear map (repair-aware selection: cross-validated ``||Y - (H + M T)||^2 / ||Y||^2``);
3. each set without repair and with the least-squares map; the best sets with the cosine map;
4. LoRA (after the best map) on the fit windows, for as many windows as the remaining budget pays for;
5. with time left, the validation perplexity of the chosen selection at every smaller count (the quality
   against layers removed that the report plots).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from depthprune.arch.layout import layout, num_layers
from depthprune.errors import DepthpruneError
from depthprune.evaluation.perplexity import perplexity_on
from depthprune.importance.metrics import make_metric
from depthprune.io.data import CalibrationSet
from depthprune.repair.families import fold_spec, lora_targets
from depthprune.repair.linear import (accumulator_bytes, block_runs, collect_statistics, fold_linear_maps,
                                      removed_runs, repaired_error, solve_maps, statistics_of)
from depthprune.repair.lora import lora_repair
from depthprune.selection.counts import protected_layers
from depthprune.selection.strategies import best_block, choose_from_scores
from depthprune.surgery.in_memory import pruned_copy, pruned_view, structure_refusal

log = logging.getLogger(__name__)

ACCUMULATOR_MEMORY = 2 * 2**30   # block statistics are kept for as many candidate blocks as fit in this
REPAIR_AWARE_CANDIDATES = 3      # blocks ranked by their repaired error that are validated
COSINE_CANDIDATES = 2            # removal sets (best by the least-squares map) refitted with the cosine objective
COSINE_TOKENS = 16384
LOGITS_MEMORY = 512 * 2**20      # validation batches are sized so that their float32 logits stay below this
TRAIN_COST_FACTOR = 3.5          # a LoRA step costs about this many forward passes of its tokens (measured: 3.1-3.4)


@dataclass
class Candidate:
    """One removal set with one repair, as the search measured it (0-based, original numbering)."""

    selection: str
    removed: list[int]
    repair: str
    status: str = "measured"           # measured | over budget | refused: ...
    val_ppl: float | None = None
    val_nll: float | None = None
    seconds: float = 0.0               # what this candidate cost (its fits and its validation)
    finished_at: float | None = None   # seconds since the search started
    details: dict = field(default_factory=dict)


@dataclass
class SearchResult:
    model: torch.nn.Module
    chosen: Candidate
    scores: list[float]                # BI on the fit windows
    repair: dict | None                # the chosen candidate's repair record (as the repair stage writes it)
    record: dict


class Clock:
    """The budget: seconds left before ``deadline`` (perf_counter), less what the final save needs."""

    def __init__(self, deadline: float, reserve: float):
        self.started = time.perf_counter()
        self.deadline = deadline
        self.reserve = reserve

    def now(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.deadline - self.reserve - time.perf_counter()

    def affords(self, seconds: float) -> bool:
        return seconds <= self.left()


def split_calibration(calibration: CalibrationSet, share: float) -> tuple[CalibrationSet, CalibrationSet]:
    """(fit, validation): the last ``share`` of the windows (at least 2) validate; the others (at least 2) fit."""
    rows = len(calibration)
    held = max(2, int(round(rows * share)))
    if rows - held < 2:
        raise DepthpruneError(f"--auto needs at least 4 calibration windows (2 to fit, 2 to validate) and the "
                              f"calibration data gives {rows}; raise --samples or give more text")
    cut = rows - held
    settings = dict(calibration.settings)
    fit = CalibrationSet(calibration.input_ids[:cut], calibration.attention_mask[:cut],
                         {**settings, "part": "fit", "rows": [0, cut]})
    val = CalibrationSet(calibration.input_ids[cut:], calibration.attention_mask[cut:],
                         {**settings, "part": "validation", "rows": [cut, rows]})
    return fit, val


def _batch_for_logits(model, windows: CalibrationSet, wanted: int) -> int:
    vocab = int(getattr(model.config, "vocab_size", 0) or model.get_output_embeddings().weight.shape[0])
    per_row = windows.input_ids.shape[1] * vocab * 4 * 2   # logits and their log-softmax
    return max(1, min(wanted, LOGITS_MEMORY // max(per_row, 1)))


class Search:
    def __init__(self, dense, calibration: CalibrationSet, n: int, recipe, clock: Clock, *, progress: bool):
        self.dense, self.n, self.recipe, self.clock, self.progress = dense, n, recipe, clock, progress
        self.total = num_layers(dense.config)
        sel = recipe.selection
        self.protected = protected_layers(self.total, sel.protect_first, sel.protect_last)
        self.fit, self.val = split_calibration(calibration, recipe.search.validation)
        self.batch = recipe.calibration.batch_size
        self.val_batch = _batch_for_logits(dense, self.val, self.batch)
        self.candidates: list[Candidate] = []
        self.curve: list[dict] = []
        self.skipped: list[str] = []
        self.best_model = None
        self.best: Candidate | None = None
        self.best_repair: dict | None = None
        self.repairs = self._repairs()
        self.costs: dict[str, float] = {}

    # -- what this family allows -------------------------------------------------------------------------------

    def _repairs(self) -> list[str]:
        allowed = []
        for repair in self.recipe.search.repairs:
            try:
                if repair in ("linear", "cosine"):
                    fold_spec(self.dense.config)
                if repair == "lora":
                    import peft  # noqa: F401  (an optional dependency: present or not)
                    lora_targets(self.dense.config)
            except (DepthpruneError, ImportError) as exc:
                self.skipped.append(f"{repair}: " + ("needs peft (pip install 'depthprune[repair]')"
                                                     if isinstance(exc, ImportError) else str(exc)))
                continue
            allowed.append(repair)
        return allowed

    # -- measuring ---------------------------------------------------------------------------------------------

    def _validate(self, model) -> tuple[float, float, float]:
        started = time.perf_counter()
        result = perplexity_on(model, self.val, batch_size=self.val_batch, progress=False, desc="validation")
        seconds = time.perf_counter() - started
        self.costs["validation"] = seconds
        return result.ppl, result.nll, seconds

    def _record(self, cand: Candidate, model_or_factory, repair: dict | None, started: float) -> Candidate:
        """Validate ``cand`` and keep it when it is the best so far (``model_or_factory``: the model, or a
        function building it, only called when the candidate wins)."""
        model = model_or_factory
        ppl, nll, _ = self._validate(model)
        cand.val_ppl, cand.val_nll = round(ppl, 4), nll
        cand.seconds = round(time.perf_counter() - started, 3)
        cand.finished_at = round(self.clock.now(), 3)
        self.candidates.append(cand)
        log.info("auto: %s, %s, removed %s: validation ppl %.3f (%.1f s)", cand.selection, cand.repair, cand.removed,
                 ppl, cand.seconds)
        if math.isfinite(nll) and (self.best is None or nll < self.best.val_nll):
            self.best, self.best_repair = cand, repair
            self.best_model = model
        return cand

    def _over_budget(self, selection: str, removed: list[int], repair: str, estimate: float) -> bool:
        if self.clock.affords(estimate):
            return False
        self.candidates.append(Candidate(selection, removed, repair, status="over budget",
                                         details={"estimated_seconds": round(estimate, 2),
                                                  "seconds_left": round(max(self.clock.left(), 0.0), 2)}))
        return True

    def _validation_estimate(self) -> float:
        return self.costs.get("validation", 0.0) * 1.2

    # -- 1. one pass: scores and block statistics --------------------------------------------------------------

    def first_pass(self):
        n, total = self.n, self.total
        bi = make_metric("bi", total)
        angular = make_metric("angular", total, block_sizes=tuple(range(1, n + 1)))
        runs, room = [], 0
        if {"linear", "cosine"} & set(self.repairs):
            runs = block_runs(total, n, self.protected)
            hidden = int(self.dense.config.hidden_size)
            room = max(1, ACCUMULATOR_MEMORY // accumulator_bytes(hidden, fold_spec(self.dense.config).diagonal))
        started = time.perf_counter()
        stats = collect_statistics(self.dense, self.fit, runs=runs if len(runs) <= room else [],
                                   metrics=[bi, angular], batch_size=self.batch, progress=self.progress)
        self.costs["fit_pass"] = time.perf_counter() - started
        self.bi = [float(v) for v in bi.result()]
        self.blocks = angular.block_result()
        if len(runs) > room:
            # the sums of every block do not fit: a second pass for the blocks the angular distance ranks first
            self.skipped.append(f"repair-aware selection ranked the {room} best angular blocks of {len(runs)} "
                                "(memory of the block statistics)")
            runs = sorted(runs, key=lambda r: (self.blocks[n][r.first], r.first))[:room]
            if self.clock.affords(self.costs["fit_pass"]):
                stats = collect_statistics(self.dense, self.fit, runs=runs, batch_size=self.batch,
                                           progress=self.progress)
            else:
                runs = []
        self.stats = stats
        self.block_errors = {r: repaired_error(stats.accumulators[r]) for r in runs}

    def removal_sets(self) -> list[tuple[str, list[int], dict]]:
        n, sel = self.n, self.recipe.selection
        sets: list[tuple[str, list[int], dict]] = []
        ranked = sorted(self.block_errors.items(), key=lambda kv: (kv[1], kv[0].first))
        for rank, (run, err) in enumerate(ranked[:REPAIR_AWARE_CANDIDATES]):
            sets.append(("repair-aware block", list(range(run.first, run.last + 1)),
                         {"repaired_error": round(err, 6), "rank": rank + 1}))
        start = best_block(self.blocks[n], n, self.total, self.protected)
        sets.insert(min(1, len(sets)), ("angular block", list(range(start, start + n)),
                                        {"angular_distance": round(self.blocks[n][start], 6)}))
        one_shot = choose_from_scores(self.bi, n, metric="bi", strategy="one-shot", protect_first=sel.protect_first,
                                      protect_last=sel.protect_last)
        sets.insert(min(2, len(sets)), ("bi one-shot", one_shot.removed, {"order": one_shot.order}))
        seen, unique = set(), []
        for name, removed, details in sets:
            key = tuple(removed)
            if key in seen:
                next(c for c in unique if tuple(c[1]) == key)[2].setdefault("also", []).append(name)
                continue
            seen.add(key)
            unique.append((name, removed, details))
        return unique

    # -- 2.-3. none and the linear maps ------------------------------------------------------------------------

    def try_none(self, name: str, removed: list[int], details: dict) -> None:
        if self._over_budget(name, removed, "none", self._validation_estimate()):
            return
        started = time.perf_counter()
        with pruned_view(self.dense, removed) as view:
            ppl, nll, _ = self._validate(view)
        cand = Candidate(name, removed, "none", val_ppl=round(ppl, 4), val_nll=nll,
                         seconds=round(time.perf_counter() - started, 3), finished_at=round(self.clock.now(), 3),
                         details=dict(details))
        self.candidates.append(cand)
        log.info("auto: %s, none, removed %s: validation ppl %.3f", name, removed, ppl)
        if math.isfinite(nll) and (self.best is None or nll < self.best.val_nll):
            self.best, self.best_repair, self.best_model = cand, None, None  # built from the dense model at the end

    def _statistics(self, removed: list[int], keep_tokens: int = 0):
        runs = removed_runs(removed, self.total)
        if not keep_tokens and all(r in self.stats.accumulators for r in runs):
            return statistics_of(self.stats, runs), 0.0
        started = time.perf_counter()
        stats = collect_statistics(self.dense, self.fit, removed, keep_tokens=keep_tokens, batch_size=self.batch,
                                   progress=False)
        return stats, time.perf_counter() - started

    def try_linear(self, name: str, removed: list[int], details: dict, objective: str) -> Candidate | None:
        label = "linear" if objective == "lstsq" else "cosine"
        try:
            runs = removed_runs(removed, self.total)
        except DepthpruneError as exc:
            self.candidates.append(Candidate(name, removed, label, status=f"refused: {exc}"))
            return None
        cached = objective == "lstsq" and all(r in self.stats.accumulators for r in runs)
        estimate = (0.0 if cached else self.costs["fit_pass"]) + self._validation_estimate() + \
            (self.costs.get("cosine_solve", 5.0) if objective == "cosine" else 0.0)
        if self._over_budget(name, removed, label, estimate):
            return None
        started = time.perf_counter()
        stats, _ = self._statistics(removed, keep_tokens=COSINE_TOKENS if objective == "cosine" else 0)
        solve_started = time.perf_counter()
        rep = self.recipe.repair
        maps, report = solve_maps(stats, objective=objective, ridge=rep.ridge, cosine_steps=rep.cosine_steps)
        if objective == "cosine":
            self.costs["cosine_solve"] = time.perf_counter() - solve_started
        model = pruned_copy(self.dense, removed)
        fold_linear_maps(model, maps, removed, self.total)
        record = {"methods": ["linear"], "linear": report.to_json(), "settings": {"objective": objective}}
        cand = Candidate(name, removed, label, details=dict(details))
        return self._record(cand, model, record, started)

    # -- 4. LoRA after the best map ----------------------------------------------------------------------------

    def try_lora(self) -> None:
        base = self.best
        if base is None:
            return
        rep = self.recipe.repair
        window_tokens = int(self.fit.attention_mask.sum()) / max(len(self.fit), 1)
        forward_per_token = self.costs.get("validation", 1.0) / max(int(self.val.attention_mask.sum()), 1)
        per_window = TRAIN_COST_FACTOR * forward_per_token * window_tokens * (2.0 if rep.distill else 1.0)
        spare = self.clock.left() - self._validation_estimate() - self.costs.get("copy", 1.0)
        windows = min(len(self.fit), int(spare // per_window) if per_window > 0 else len(self.fit))
        if ("repair", "tokens") in self.recipe.active_fields():
            windows = min(windows, max(1, rep.tokens // max(int(window_tokens), 1)))
        label = f"{base.repair}+lora" if base.repair != "none" else "lora"
        if windows < max(2, rep.batch_size):
            self.candidates.append(Candidate(base.selection, base.removed, label, status="over budget",
                                             details={"affordable_windows": max(windows, 0),
                                                      "seconds_left": round(max(self.clock.left(), 0.0), 2)}))
            return
        started = time.perf_counter()
        model = self._materialize(base)
        if model is self.best_model:
            model = copy.deepcopy(model)
        self.costs["copy"] = time.perf_counter() - started
        train = CalibrationSet(self.fit.input_ids[:windows], self.fit.attention_mask[:windows],
                               {**self.fit.settings, "part": "lora", "rows": [0, windows]})
        model, report = lora_repair(model, train, None, teacher=self.dense if rep.distill else None, rank=rep.rank,
                                    alpha=rep.alpha, lr=rep.lr, batch_size=rep.batch_size, seed=rep.seed,
                                    progress=self.progress)
        bad = [name for name, p in model.named_parameters() if not bool(p.detach().isfinite().all())]
        if bad:
            self.candidates.append(Candidate(base.selection, base.removed, label,
                                             status="refused: LoRA produced non-finite weights (lower --repair-lr)"))
            return
        record = {"methods": (["linear"] if base.repair != "none" else []) + ["lora"],
                  "lora": {**report.to_json(), "data": dict(train.settings)}}
        if self.best_repair:
            record = {**self.best_repair, **record}
        cand = Candidate(base.selection, base.removed, label,
                         details={"windows": windows, "tokens": report.train_tokens, "from": base.repair})
        self._record(cand, model, record, started)

    def _materialize(self, cand: Candidate):
        """The model of ``cand`` (the best so far): kept from its validation, or cut from the dense model."""
        if self.best is cand and self.best_model is not None:
            return self.best_model
        if cand.repair == "none":
            return pruned_copy(self.dense, cand.removed)
        raise DepthpruneError("internal: a repaired candidate's model was not kept")  # pragma: no cover

    # -- 5. quality against layers removed ---------------------------------------------------------------------

    def fill_curve(self) -> None:
        chosen = self.best
        sel = self.recipe.selection
        how = "angular block" if "block" in chosen.selection else "bi one-shot"
        at_n = next((c for c in self.candidates if c.repair == "none" and c.status == "measured"
                     and how in [c.selection, *c.details.get("also", [])]), None)
        if at_n is not None:
            self.curve.append({"n_removed": self.n, "selection": how, "removed": at_n.removed, "repair": "none",
                               "val_ppl": at_n.val_ppl, "finished_at": at_n.finished_at})
        for k in range(1, self.n):
            if not self.clock.affords(self._validation_estimate()):
                self.skipped.append(f"curve stopped at {k - 1} of {self.n - 1} smaller counts (budget)")
                return
            if "block" in chosen.selection:
                start = best_block(self.blocks[k], k, self.total, self.protected)
                removed, how = list(range(start, start + k)), "angular block"
            else:
                removed = choose_from_scores(self.bi, k, metric="bi", strategy="one-shot",
                                             protect_first=sel.protect_first, protect_last=sel.protect_last).removed
                how = "bi one-shot"
            with pruned_view(self.dense, removed) as view:
                ppl, nll, _ = self._validate(view)
            self.curve.append({"n_removed": k, "selection": how, "removed": removed, "repair": "none",
                               "val_ppl": round(ppl, 4), "finished_at": round(self.clock.now(), 3)})

    # -- the whole search --------------------------------------------------------------------------------------

    def run(self, structure_ok: Callable[[list[int]], str | None]) -> SearchResult:
        dense_ppl, dense_nll, _ = self._validate(self.dense)
        self.first_pass()
        sets = []
        for name, removed, details in self.removal_sets():
            why = structure_ok(removed)
            if why:
                self.candidates.append(Candidate(name, removed, "-", status=f"refused: {why}"))
            else:
                sets.append((name, removed, details))
        if not sets:
            raise DepthpruneError(f"--auto found no removal of {self.n} layers this family can save: "
                                  f"{self.candidates[0].status}")
        if "none" in self.repairs or not ({"linear", "cosine", "lora"} & set(self.repairs)):
            for name, removed, details in sets:
                self.try_none(name, removed, details)
        linear_done = []
        if "linear" in self.repairs:
            for name, removed, details in sets:
                cand = self.try_linear(name, removed, details, "lstsq")
                if cand is not None:
                    linear_done.append(cand)
        if "cosine" in self.repairs:
            ranked = sorted(linear_done, key=lambda c: c.val_nll) if linear_done else \
                [Candidate(n, r, "none", details=d) for n, r, d in sets]
            for cand in ranked[:COSINE_CANDIDATES]:
                self.try_linear(cand.selection, cand.removed, cand.details, "cosine")
        if self.best is None:  # "none" not asked for and every repair over budget: the cheapest plain cut
            name, removed, details = sets[0]
            self.try_none(name, removed, details)
            if self.best is None:
                raise DepthpruneError(f"--budget {self.recipe.search.budget} does not pay for one candidate: the "
                                      f"fitting pass took {self.costs['fit_pass']:.0f} s; give a larger --budget")
        if "lora" in self.repairs:
            self.try_lora()
        self.fill_curve()
        model = self._materialize(self.best)
        chosen = self.best
        record = {
            "budget": self.recipe.search.budget,
            "budget_seconds": self.recipe.search.budget_seconds,
            "reserved_for_saving_seconds": round(self.clock.reserve, 3),
            "search_seconds": round(self.clock.now(), 3),
            "repairs": list(self.repairs),
            "fit": {"windows": len(self.fit), "tokens": self.fit.num_tokens, "rows": self.fit.settings["rows"]},
            "validation": {"windows": len(self.val), "tokens": self.val.num_tokens, "rows": self.val.settings["rows"],
                           "share": self.recipe.search.validation,
                           "text": "the last calibration windows; no fit (scores, maps, LoRA) saw them"},
            "dense": {"val_ppl": round(dense_ppl, 4), "val_nll": dense_nll},
            "candidates": [_candidate_json(c) for c in self.candidates],
            "chosen": self.candidates.index(chosen),
            "curve": self.curve,
            "skipped": self.skipped,
            "costs_seconds": {k: round(v, 3) for k, v in self.costs.items()},
        }
        return SearchResult(model, chosen, self.bi, self.best_repair, record)


def _candidate_json(cand: Candidate) -> dict:
    data = asdict(cand)
    return data


def search(dense, calibration: CalibrationSet, n: int, recipe, *, deadline: float, reserve: float,
           structure_ok: Callable[[list[int]], str | None], progress: bool = True) -> SearchResult:
    """Run the search (see the module doc); ``deadline``: ``time.perf_counter()`` value the run must end by,
    ``reserve``: seconds kept for saving the result."""
    if n < 1 or n >= num_layers(dense.config):
        raise DepthpruneError(f"cannot remove {n} layers from a {num_layers(dense.config)}-layer model")
    clock = Clock(deadline, reserve)
    return Search(dense, calibration, n, recipe, clock, progress=progress).run(structure_ok)


__all__ = ["Candidate", "SearchResult", "search", "split_calibration"]
