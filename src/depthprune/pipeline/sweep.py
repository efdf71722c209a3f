"""Perplexity versus layers removed, for several metrics and strategies (ShortGPT's figure, any model).

One model in memory, never reloaded or copied: every streaming metric comes from one forward
pass (plus the angular distance of every block size, for the Gromov et al. heatmap), ``ppl`` and
``taylor`` are computed once, iterative/greedy runs go once to the largest count (their removal
sets are nested), and each distinct removal set is evaluated once on a weight-sharing pruned view
(:func:`depthprune.surgery.pruned_view`). Layer numbers are 0-based, original numbering.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from depthprune.arch.layout import layout
from depthprune.io.data import CalibrationSet
from depthprune.errors import DepthpruneError
from depthprune.evaluation.lmeval import evaluate_tasks
from depthprune.evaluation.perplexity import perplexity_on
from depthprune.importance.loss_metrics import naive_loss
from depthprune.importance.metrics import LOSS_METRICS, STREAMING_METRICS, check_metric
from depthprune._version import library_versions
from depthprune.selection.strategies import (STRATEGIES, MetricScores, Selection, apply_selection, compute_scores, plan,
                                             resolve)
from depthprune.surgery.in_memory import pruned_view

log = logging.getLogger(__name__)

CSV_COLUMNS = ("metric", "strategy", "n_removed", "removed_layers", "ppl", "nll", "tokens")


@dataclass
class SweepPoint:
    metric: str
    strategy: str
    n_removed: int
    removed_layers: list[int]
    ppl: float
    nll: float
    tokens: int
    tasks: dict | None = None  # task -> {"acc": .., "acc_stderr": .., ...} when the sweep ran lm-eval tasks


# Sudden drops (the paper's "sharp drops at some layer counts"): between consecutive counts of one
# metric/strategy line, a fall of accuracy larger than DROP_STDERR_K x the combined standard error
# (sqrt(se_a^2 + se_b^2), lm-eval's stderr of the two points) AND at least DROP_MIN_POINTS points.
DROP_STDERR_K = 2.0
DROP_MIN_POINTS = 0.03


def sudden_drops(line: list[tuple[int, float, float | None]], *, k: float = DROP_STDERR_K,
                 min_points: float = DROP_MIN_POINTS) -> list[int]:
    """Counts n (of (n, acc, stderr) in ascending n) where acc fell from the previous count by more
    than ``k`` combined stderrs and by at least ``min_points`` (accuracy as a fraction)."""
    drops = []
    for (_, a0, s0), (n1, a1, s1) in zip(line, line[1:]):
        fall = a0 - a1
        se = ((s0 or 0.0) ** 2 + (s1 or 0.0) ** 2) ** 0.5
        if fall >= min_points and fall > k * se:
            drops.append(n1)
    return drops


@dataclass
class SweepResult:
    """The table behind the plot, plus the scores and settings that produced it."""

    model: str
    model_type: str | None
    num_layers: int
    counts: list[int]
    dense: dict
    points: list[SweepPoint]
    scores: dict[str, list[float]]
    angular_blocks: dict[int, list[float]]
    skipped: list[str]
    calibration: dict
    evaluation: dict
    timings_s: dict
    protect_first: int = 0
    protect_last: int = 0
    dense_tasks: dict | None = None   # lm-eval metrics of the dense model, when tasks were run
    task_settings: dict | None = None  # tasks, limit, data_dir, num_fewshot
    versions: dict = field(default_factory=library_versions)
    indexing: str = "0-based, original numbering"

    def to_json(self) -> dict:
        data = asdict(self)
        data["angular_blocks"] = {str(k): v for k, v in self.angular_blocks.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "SweepResult":
        """Read back :meth:`to_json` (e.g. a saved ``sweep.json``, to redraw its plots)."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["points"] = [SweepPoint(**p) for p in data["points"]]
        fields["angular_blocks"] = {int(k): v for k, v in (data.get("angular_blocks") or {}).items()}
        return cls(**fields)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_COLUMNS)
        writer.writerow(["dense", "-", 0, "", f"{self.dense['ppl']:.6g}", f"{self.dense['nll']:.6g}",
                         self.dense["tokens"]])
        for p in self.points:
            writer.writerow([p.metric, p.strategy, p.n_removed, " ".join(map(str, p.removed_layers)),
                             f"{p.ppl:.6g}", f"{p.nll:.6g}", p.tokens])
        if self.dense_tasks is None:
            return buf.getvalue()
        return _with_task_columns(buf.getvalue(), self)

    def accuracy_lines(self, task: str, metric: str = "acc") -> dict[str, list[tuple[int, float, float | None]]]:
        """{'metric/strategy': [(n_removed, acc, stderr), ...]} from the dense point (0, ...)."""
        if not self.dense_tasks or task not in self.dense_tasks:
            return {}
        d = self.dense_tasks[task]
        out: dict[str, list[tuple[int, float, float | None]]] = {}
        for p in self.points:
            if p.tasks and task in p.tasks:
                t = p.tasks[task]
                out.setdefault(f"{p.metric}/{p.strategy}", [(0, d[metric], d.get(f"{metric}_stderr"))]).append(
                    (p.n_removed, t[metric], t.get(f"{metric}_stderr")))
        return out

    def drops(self, metric: str = "acc") -> dict[str, dict[str, list[int]]]:
        """{task: {'metric/strategy': [counts with a sudden drop]}} (see :func:`sudden_drops`)."""
        return {task: {k: sudden_drops(v) for k, v in self.accuracy_lines(task, metric).items()}
                for task in (self.dense_tasks or {})}

    def lines(self) -> dict[str, list[tuple[int, float]]]:
        """{'metric/strategy': [(n_removed, ppl), ...]} starting at the dense point (0, ppl)."""
        out: dict[str, list[tuple[int, float]]] = {}
        for p in self.points:
            out.setdefault(f"{p.metric}/{p.strategy}", [(0, self.dense["ppl"])]).append((p.n_removed, p.ppl))
        return out

    def best(self) -> dict[int, SweepPoint]:
        """The lowest-perplexity point for each count."""
        best: dict[int, SweepPoint] = {}
        for p in self.points:
            if p.n_removed not in best or p.ppl < best[p.n_removed].ppl:
                best[p.n_removed] = p
        return best


def _with_task_columns(text: str, result: "SweepResult") -> str:
    """The CSV with one ``<task>_acc`` and ``<task>_acc_stderr`` column per task appended."""
    tasks = list(result.dense_tasks or {})
    rows = list(csv.reader(io.StringIO(text)))
    rows[0] += [c for t in tasks for c in (f"{t}_acc", f"{t}_acc_stderr")]

    def cells(metrics: dict | None) -> list[str]:
        out = []
        for t in tasks:
            m = (metrics or {}).get(t) or {}
            out += [f"{m['acc']:.6g}" if m.get("acc") is not None else "",
                    f"{m['acc_stderr']:.6g}" if m.get("acc_stderr") is not None else ""]
        return out

    rows[1] += cells(result.dense_tasks)
    for row, p in zip(rows[2:], result.points):
        row += cells(p.tasks)
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def combinations(metrics: Sequence[str], strategies: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Valid (metric, strategy) pairs in the given order, and a note for each pair that is skipped."""
    for m in metrics:
        check_metric(m)
    for s in strategies:
        if s not in STRATEGIES:
            raise DepthpruneError(f"unknown strategy '{s}': choose one of {', '.join(STRATEGIES)}")
    pairs, skipped = [], []
    for s in strategies:
        if s == "greedy-ppl":
            pairs.append(("ppl", s))
            continue
        if s == "laco":
            pairs.append(("similarity", s))
            continue
        for m in metrics:
            try:
                resolve(m, s)
            except DepthpruneError as exc:
                skipped.append(f"{m}/{s}: {exc}")
                continue
            pairs.append((m, s))
    if not pairs:
        raise DepthpruneError("no valid metric/strategy combination to sweep; see the skipped list")
    return pairs, skipped


def sweep_counts(total: int, max_remove: int | None, counts: Sequence[int] | None) -> list[int]:
    if (max_remove is None) == (counts is None):
        raise DepthpruneError("give exactly one of --max-remove N or --counts N1,N2,...")
    chosen = list(range(1, max_remove + 1)) if max_remove is not None else sorted(set(int(c) for c in counts))
    if not chosen or chosen[0] < 1 or chosen[-1] >= total:
        raise DepthpruneError(f"layers to remove must be between 1 and {total - 1} for a {total}-layer model")
    return chosen


def run_sweep(model, tokenizer, calibration: CalibrationSet, windows: CalibrationSet, *, metrics: Sequence[str],
              strategies: Sequence[str], counts: Sequence[int], protect_first: int = 0, protect_last: int = 0,
              batch_size: int = 8, ppl_batch_size: int = 1, seed: int = 0, source: str = "",
              skip: Sequence[str] = (), precomputed: dict[str, MetricScores] | None = None,
              progress: bool = True, laco=None, tasks: Sequence[str] | None = None,
              task_options: dict | None = None) -> SweepResult:
    """The sweep on an in-memory model with ready calibration and evaluation windows.

    ``skip``: "metric/strategy" pairs to leave out; ``precomputed``: ppl/taylor scores already
    computed on the same model and calibration (not recomputed).
    """
    total = len(layout(model).layers(model))
    pairs, skipped = combinations(metrics, strategies)
    skipped += [f"{m}/{s}: left out on request" for m, s in pairs if f"{m}/{s}" in skip]
    pairs = [(m, s) for m, s in pairs if f"{m}/{s}" not in skip]
    timings: dict[str, float] = {}

    def timed(key, fn):
        t0 = time.perf_counter()
        value = fn()
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
        return value

    timed("bare_forward", lambda: naive_loss(model, calibration, batch_size=batch_size))
    # one pass: every streaming metric asked for, plus angular (last token) for every block size
    streaming = list(dict.fromkeys([m for m, _ in pairs if m in STREAMING_METRICS] + ["angular"]))
    pre: dict[str, MetricScores] = timed(
        "streaming_pass", lambda: compute_scores(model, calibration, streaming, batch_size=batch_size, seed=seed,
                                                 block_sizes=range(1, total + 1), progress=progress))
    pre.update({k: v for k, v in (precomputed or {}).items() if k in LOSS_METRICS})
    for m in LOSS_METRICS:
        if m in pre:
            continue
        if any(pm == m and s in ("one-shot", "block") for pm, s in pairs) or (m == "taylor" and (m, "iterative") in pairs):
            pre.update(timed(f"{m}_scores", lambda m=m: compute_scores(model, calibration, [m], batch_size=batch_size,
                                                                        progress=progress)))

    selections: dict[tuple[str, str], dict[int, Selection]] = {}
    greedy: dict[int, Selection] | None = None
    for m, s in pairs:
        if m == "ppl" and s in ("greedy-ppl", "iterative") and greedy is not None:
            chosen = greedy
        elif s == "laco":  # LaCo may stop short of a count (threshold T reached): that count and larger are skipped
            chosen = {}
            for n in counts:
                try:
                    got, _ = timed(f"select:{m}/{s}", lambda n=n: plan(
                        model, calibration, [n], metric=m, strategy=s, protect_first=protect_first,
                        protect_last=protect_last, batch_size=batch_size, seed=seed, precomputed=pre,
                        progress=progress, laco=laco))
                except DepthpruneError as exc:
                    later = [c for c in counts if c >= n]
                    skipped.append(f"{m}/{s} at {', '.join(map(str, later))} layers: {exc}")
                    log.warning("%s/%s: %s; counts %s skipped", m, s, exc, later)
                    break
                chosen.update(got)
        else:
            chosen, first = timed(f"select:{m}/{s}", lambda: plan(
                model, calibration, counts, metric=m, strategy=s, protect_first=protect_first,
                protect_last=protect_last, batch_size=batch_size, seed=seed, precomputed=pre, progress=progress,
                laco=laco))
            if m == "ppl" and s in ("greedy-ppl", "iterative"):
                greedy = chosen
                if "ppl" not in pre and first is not None:
                    pre["ppl"] = first
        selections[(m, s)] = chosen

    evaluated: dict[tuple[int, ...], dict] = {}

    def evaluate(removed: Sequence[int]) -> dict:
        key = tuple(sorted(removed))
        if key not in evaluated:
            with pruned_view(model, key):
                evaluated[key] = timed("evaluation", lambda: perplexity_on(
                    model, windows, batch_size=ppl_batch_size, progress=progress,
                    desc=f"ppl without {list(key)}" if key else "ppl dense").to_json())
        return evaluated[key]

    task_options = dict(task_options or {})
    task_results: dict = {}

    def run_tasks(m, key) -> dict | None:  # lm-eval accuracy of one model (None without --tasks)
        if not tasks:
            return None
        if key not in task_results:
            out = timed("tasks", lambda: evaluate_tasks(m, tokenizer, list(tasks), **task_options))
            task_results[key] = {t: v["metrics"] for t, v in out["tasks"].items()}
        return task_results[key]

    def evaluate_merged(selection: Selection) -> tuple[dict, dict | None]:  # laco: merged weights differ
        merged = apply_selection(model, selection)
        r = timed("evaluation", lambda: perplexity_on(merged, windows, batch_size=ppl_batch_size, progress=progress,
                                                      desc=f"ppl laco {selection.details['merges']}").to_json())
        t = run_tasks(merged, ("laco", str(selection.details["merges"])))
        del merged
        return r, t

    def evaluate_removed(removed: Sequence[int]) -> tuple[dict, dict | None]:
        r = evaluate(removed)
        if not tasks:
            return r, None
        key = tuple(sorted(removed))
        with pruned_view(model, key):
            return r, run_tasks(model, key)

    dense, dense_tasks = evaluate_removed(())
    points = []
    for (m, s), chosen in selections.items():
        for n in counts:
            if n not in chosen:  # skipped (see ``skipped``)
                continue
            r, t = evaluate_merged(chosen[n]) if s == "laco" else evaluate_removed(chosen[n].removed)
            points.append(SweepPoint(m, s, n, chosen[n].removed, r["ppl"], r["nll"], r["tokens"], t))
            log.info("%s/%s n=%d removed %s ppl %.3f", m, s, n, chosen[n].removed, r["ppl"])
    if not points:
        raise DepthpruneError("no sweep point could be measured: " + "; ".join(skipped))
    timings["distinct_removal_sets_evaluated"] = float(len(evaluated))
    return SweepResult(
        model=source or getattr(model.config, "_name_or_path", type(model).__name__),
        model_type=getattr(model.config, "model_type", None), num_layers=total, counts=list(counts),
        dense={k: dense[k] for k in ("ppl", "nll", "tokens")}, points=points,
        scores={k: v.scores for k, v in pre.items()}, angular_blocks=pre["angular"].blocks or {}, skipped=skipped,
        calibration=dict(calibration.settings), evaluation=dict(windows.settings),
        timings_s={k: round(v, 3) for k, v in timings.items()}, protect_first=protect_first,
        protect_last=protect_last, dense_tasks=dense_tasks,
        task_settings={"tasks": list(tasks), **{k: v for k, v in task_options.items()}} if tasks else None)


__all__ = ["SweepPoint", "SweepResult", "combinations", "run_sweep", "sweep_counts"]
