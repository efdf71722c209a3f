"""Training-free linear replacement of removed layers (ReplaceMe-style, arXiv 2505.02819).

For each maximal run ``a..b`` of removed layers, the last kept layer before it, ``j = a - 1``, ends as
``x_j = h_j + m_j`` (residual plus MLP output, see :mod:`.families`). In the dense model the hidden state
entering the run's successor is ``y = x_b`` (the output of the run's last layer). We fit a map ``T`` with

    h_j + m_j T  ~  y        (i.e. m_j T ~ r := y - h_j),

from the DENSE model's activations on the calibration set, and fold ``T`` into the projection that produces
``m_j``: the pruned model then computes ``h_j + m_j T`` at layer ``j`` exactly, with its plain architecture.
``T = I`` is the unrepaired pruned model.

Objectives:

* ``lstsq``: ``min ||M T - R||^2 + lam ||T - I||^2`` in closed form. The normal equations ``M^T M`` and
  ``M^T R`` are accumulated in float64 batch by batch over real (non-pad) tokens only, so no activation
  outlives its batch; ``lam = ridge * trace(M^T M) / d`` (ridge pulls towards the identity, i.e. towards
  "no repair", never towards zeroing the MLP). By default the ridge is chosen per run from a grid by 2-fold
  cross-validation over calibration sequences (even/odd rows accumulated separately: no extra pass).
* ``cosine``: ReplaceMe's objective, ``min mean_t (1 - cos(h_t + m_t T, y_t))``, by L-BFGS started from the
  least-squares map. It needs the activations themselves: up to ``cosine_tokens`` tokens per run are kept
  on the CPU in float32 (3 x tokens x d x 4 bytes per run).

Families whose MLP output is normalised before the residual add (Gemma 2/3, OLMo 2) take a diagonal map,
the restriction that folds exactly into the norm's scale.

The activations come from :func:`depthprune.scoring.run_layer_metrics` (the streaming hook pass used for
scoring) with one extra forward hook per source layer on the module producing ``m_j``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from depthprune.arch.layout import layout, num_layers
from depthprune.io.data import CalibrationSet
from depthprune.errors import DepthpruneError
from depthprune.importance.scoring import _first_tensor, run_layer_metrics
from depthprune.importance.streamed import ActivationStore, StreamedModel, run_layer_metrics_streamed
from depthprune.io.safetensors import TORCH_DTYPES
from depthprune.surgery.in_memory import pruned_copy, remove_layers, validate_layer_indices
from depthprune.repair.families import FoldSpec, fold_spec
from depthprune.repair.folding import capture_module, fold_map, projections

log = logging.getLogger(__name__)

OBJECTIVES = ("lstsq", "cosine")


@dataclass(frozen=True)
class Run:
    """A maximal run ``first..last`` of removed layers and the kept layer ``source`` before it (0-based, original)."""

    source: int
    first: int
    last: int


def removed_runs(removed: Sequence[int], total: int) -> list[Run]:
    """Maximal runs of consecutive removed layers; a run starting at layer 0 is refused (nothing to fold into)."""
    removed = validate_layer_indices(removed, total)
    runs: list[Run] = []
    for i in removed:
        if runs and runs[-1].last == i - 1:
            runs[-1] = Run(runs[-1].source, runs[-1].first, i)
        else:
            runs.append(Run(i - 1, i, i))
    if runs and runs[0].first == 0:
        raise DepthpruneError("linear repair cannot replace a removed run that starts at layer 0: no kept layer "
                              "precedes it to fold the map into; keep layer 0 (--protect-first 1) or use lora repair")
    return runs


@dataclass
class RunFit:
    """Everything measured while fitting one run's map (mse is per token, summed over the d features)."""

    source: int
    removed: list[int]
    tokens: int = 0
    mse_identity: float = 0.0     # ||R - M||^2 / n : the unrepaired pruned model
    mse_lstsq: float = 0.0
    cos_loss_identity: float | None = None   # mean 1 - cos, only for the cosine objective
    cos_loss_lstsq: float | None = None
    cos_loss_final: float | None = None
    ridge: float | None = None    # the ridge used for this run (chosen by cross-validation when not given)


@dataclass
class LinearRepairReport:
    objective: str
    ridge: float | None           # None: chosen per run by cross-validation (see runs[i].ridge)
    diagonal: bool
    calibration_tokens: int
    seconds: float
    runs: list[RunFit] = field(default_factory=list)
    cosine_steps: int | None = None
    cosine_tokens: int | None = None
    streamed: dict | None = None  # layer-streamed fit: layers read, bytes read, activations held and spilled

    def to_json(self) -> dict:
        return asdict(self)


class _Accumulator:
    """Float64 normal equations of one run, kept separately for two folds of calibration sequences (even and odd
    rows, for choosing the ridge by cross-validation), plus a bounded token sample for the cosine objective."""

    def __init__(self, diagonal: bool, keep: int):
        self.diagonal = diagonal
        self.keep = keep
        self.folds: list[dict] = [{"A": None, "B": None, "rr": 0.0, "yy": 0.0, "n": 0} for _ in range(2)]
        self.rows_seen = 0
        self.samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.kept = 0

    @property
    def A(self) -> torch.Tensor:   # M^T M (or sum m^2 per feature)
        return self.folds[0]["A"] + self.folds[1]["A"] if self.folds[1]["A"] is not None else self.folds[0]["A"]

    @property
    def B(self) -> torch.Tensor:   # M^T R (or sum m r per feature)
        return self.folds[0]["B"] + self.folds[1]["B"] if self.folds[1]["B"] is not None else self.folds[0]["B"]

    @property
    def rr(self) -> float:         # sum ||r||^2
        return self.folds[0]["rr"] + self.folds[1]["rr"]

    @property
    def n(self) -> int:
        return self.folds[0]["n"] + self.folds[1]["n"]

    def add(self, m: torch.Tensor, h: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, batch_rows: int) -> None:
        """One batch: ``m, h, y`` are (tokens, d) of real tokens, ``rows`` the batch row of each token."""
        dev = torch.device("cpu") if m.device.type == "mps" else m.device
        y64 = y.to(dev, torch.float64)
        m64, r64 = m.to(dev, torch.float64), y64 - h.to(dev, torch.float64)
        fold_of = (rows.to(dev) + self.rows_seen) % 2
        self.rows_seen += batch_rows
        for k, fold in enumerate(self.folds):
            sel = fold_of == k
            mk, rk, yk = m64[sel], r64[sel], y64[sel]
            if self.diagonal:
                a, b = (mk * mk).sum(0), (mk * rk).sum(0)
            else:
                a, b = mk.T @ mk, mk.T @ rk
            fold["A"] = a if fold["A"] is None else fold["A"] + a
            fold["B"] = b if fold["B"] is None else fold["B"] + b
            fold["rr"] += float((rk * rk).sum())
            fold["yy"] += float((yk * yk).sum())
            fold["n"] += int(mk.shape[0])
        if self.kept < self.keep:
            take = min(self.keep - self.kept, m.shape[0])
            self.samples.append(tuple(t[:take].detach().float().cpu() for t in (m, h, y)))
            self.kept += take


RIDGE_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def choose_ridge(acc: "_Accumulator", grid: Sequence[float] = RIDGE_GRID) -> float:
    """The ridge with the lowest 2-fold cross-validated residual (fit on even sequences, score on odd, and back)."""
    return _cross_validated(acc, grid)[0]


def _cross_validated(acc: "_Accumulator", grid: Sequence[float]) -> tuple[float, float | None]:
    """(best ridge, its summed held-out squared error over both folds); the error is None with one fold only."""
    f0, f1 = acc.folds
    if f0["n"] == 0 or f1["n"] == 0:
        return grid[0], None
    best, best_err = grid[0], float("inf")
    for ridge in grid:
        err = 0.0
        for fit, held in ((f0, f1), (f1, f0)):
            T = solve_lstsq(fit["A"], fit["B"], ridge)
            err += _mse_of(held["A"], held["B"], held["rr"], held["n"], T) * held["n"]
        if err < best_err:
            best, best_err = ridge, err
    return best, best_err


def repaired_error(acc: "_Accumulator", grid: Sequence[float] = RIDGE_GRID) -> float:
    """How far the run's successor input stays from its dense value after the best linear map, as a share of its
    energy: the 2-fold cross-validated ``||Y - (H + M T)||^2 / ||Y||^2`` (scale-free, so runs at different depths
    compare; in-sample when only one fold holds tokens)."""
    ridge, err = _cross_validated(acc, grid)
    if err is None:
        err = _mse(acc, solve_lstsq(acc.A, acc.B, ridge)) * acc.n
    yy = acc.folds[0]["yy"] + acc.folds[1]["yy"]
    return float(max(err, 0.0) / yy) if yy > 0 else float("inf")


def solve_lstsq(A: torch.Tensor, B: torch.Tensor, ridge: float) -> torch.Tensor:
    """``argmin ||M T - R||^2 + lam ||T - I||^2`` from ``A = M^T M``, ``B = M^T R`` (diagonal if A is a vector)."""
    A, B = A.double().cpu(), B.double().cpu()
    d = A.shape[0]
    if A.dim() == 1:
        lam = ridge * float(A.mean()) if float(A.mean()) > 0 else ridge
        return (B + lam) / (A + lam)
    lam = ridge * float(torch.trace(A)) / d if float(torch.trace(A)) > 0 else ridge
    eye = torch.eye(d, dtype=torch.float64)
    return torch.linalg.solve(A + lam * eye, B + lam * eye)


def _mse_of(A: torch.Tensor, B: torch.Tensor, rr: float, n: int, T: torch.Tensor) -> float:
    """||R - M T||^2 / n from the sums: rr - 2 tr(T^T B) + tr(T^T A T)."""
    A, B = A.double().cpu(), B.double().cpu()
    if T.dim() == 1:
        val = rr - 2 * float((T * B).sum()) + float((T * T * A).sum())
    else:
        val = rr - 2 * float((T * B).sum()) + float((T * (A @ T)).sum())
    return val / max(n, 1)


def _mse(acc: _Accumulator, T: torch.Tensor) -> float:
    return _mse_of(acc.A, acc.B, acc.rr, acc.n, T)


def _apply(m: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    return m * T if T.dim() == 1 else m @ T


def _cos_loss(m, h, y, T) -> torch.Tensor:
    return (1 - F.cosine_similarity(h + _apply(m, T), y, dim=-1)).mean()


def refine_cosine(m: torch.Tensor, h: torch.Tensor, y: torch.Tensor, T0: torch.Tensor, *, steps: int = 30,
                  ) -> torch.Tensor:
    """L-BFGS (strong Wolfe line search) on mean ``1 - cos(h + m T, y)`` from ``T0``; deterministic."""
    T = nn.Parameter(T0.detach().float().contiguous().clone())
    opt = torch.optim.LBFGS([T], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = _cos_loss(m, h, y, T)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return T.detach().double()


class _MapFitMetric:
    """A :class:`depthprune.metrics.LayerMetric` that feeds the run accumulators instead of scoring."""

    name = "repair-maps"

    def __init__(self, runs: list[Run], captured: dict[int, torch.Tensor], accs: dict[Run, _Accumulator]):
        self.by_source = {r.source: r for r in runs}
        self.by_last = {r.last: r for r in runs}
        self.captured = captured
        self.accs = accs
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: int, x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor) -> None:
        mask = mask.to(x_out.device, torch.bool)
        if layer in self.by_source:
            m = self.captured.pop(layer).to(x_out.device).reshape(x_out.shape)  # MoE blocks may flatten tokens
            self.pending[layer] = (m[mask], (x_out - m)[mask])
        if layer in self.by_last:
            run = self.by_last[layer]
            m, h = self.pending.pop(run.source)
            rows = mask.nonzero()[:, 0]
            self.accs[run].add(m, h, x_out[mask], rows, int(mask.shape[0]))

    def result(self) -> torch.Tensor:  # pragma: no cover - not a score
        return torch.zeros(0)


@contextlib.contextmanager
def _capture_mlp_outputs(layers: nn.ModuleList, sources: list[int], spec: FoldSpec) -> Iterator[dict]:
    captured: dict[int, torch.Tensor] = {}

    def hook(index):
        def fn(module, args, output):
            # clone: Falcon adds the attention output into the MLP output tensor in place right after
            captured[index] = _first_tensor(output).detach().clone()
        return fn

    handles = [capture_module(layers[j], spec).register_forward_hook(hook(j)) for j in sources]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@dataclass
class RunStatistics:
    """What one pass over the calibration set leaves for fitting: each run's float64 sums (and token sample)."""

    runs: list[Run]
    accumulators: dict[Run, _Accumulator]
    diagonal: bool
    tokens: int
    seconds: float


def collect_statistics(dense: nn.Module, calibration: CalibrationSet, removed: Sequence[int] | None = None, *,
                       runs: Sequence[Run] | None = None, metrics: Sequence = (), keep_tokens: int = 0,
                       batch_size: int = 8, progress: bool = True) -> RunStatistics:
    """One streaming pass of the dense model: the normal equations of every removed run's map (plus up to
    ``keep_tokens`` raw tokens per run, which the cosine objective needs).

    ``runs`` instead of ``removed``: any runs with distinct source layers and distinct last layers, overlapping or
    not (every candidate block of one size, :func:`block_runs`), each fitted as if it alone were removed.
    ``metrics``: more :class:`depthprune.importance.metrics.LayerMetric` objects fed by the same pass.
    """
    spec = fold_spec(dense.config)
    if runs is None:
        runs = removed_runs(removed or [], num_layers(dense.config))
    runs = list(runs)
    if len({r.source for r in runs}) != len(runs) or len({r.last for r in runs}) != len(runs):
        raise DepthpruneError("runs fitted in one pass need distinct source layers and distinct last layers")
    start = time.perf_counter()
    accs = {r: _Accumulator(spec.diagonal, keep_tokens) for r in runs}
    layers = layout(dense).layers(dense)
    with _capture_mlp_outputs(layers, [r.source for r in runs], spec) as captured:
        tokens = run_layer_metrics(dense, calibration, [_MapFitMetric(runs, captured, accs), *metrics],
                                   batch_size=batch_size, progress=progress)
    return RunStatistics(runs, accs, spec.diagonal, tokens, time.perf_counter() - start)


def block_runs(total: int, n: int, protected: set[int] = frozenset()) -> list[Run]:
    """Every contiguous block of ``n`` layers that avoids ``protected`` and has a kept layer before it."""
    return [Run(s - 1, s, s + n - 1) for s in range(1, total - n + 1)
            if not protected.intersection(range(s, s + n))]


def accumulator_bytes(hidden: int, diagonal: bool) -> int:
    """Memory of one run's sums (two folds of M^T M and M^T R in float64)."""
    return 2 * 2 * 8 * (hidden if diagonal else hidden * hidden)


def statistics_of(stats: RunStatistics, runs: Sequence[Run]) -> RunStatistics:
    """The part of ``stats`` that covers ``runs`` (a removal set made of runs fitted in a wider pass)."""
    return RunStatistics(list(runs), {r: stats.accumulators[r] for r in runs}, stats.diagonal, stats.tokens,
                         stats.seconds)


def solve_maps(stats: RunStatistics, *, objective: str = "lstsq", ridge: float | None = None, cosine_steps: int = 30
               ) -> tuple[dict[int, torch.Tensor], LinearRepairReport]:
    """The map of every run from collected statistics; returns ``{source layer: T}`` (original numbering).

    ``ridge=None`` chooses it per run from :data:`RIDGE_GRID` by 2-fold cross-validation over calibration sequences.
    """
    if objective not in OBJECTIVES:
        raise DepthpruneError(f"unknown repair objective '{objective}'; choose one of {', '.join(OBJECTIVES)}")
    if ridge is not None and ridge < 0:
        raise DepthpruneError(f"the ridge term must be >= 0, got {ridge}")
    start = time.perf_counter()
    maps: dict[int, torch.Tensor] = {}
    fits: list[RunFit] = []
    kept = 0
    for run in stats.runs:
        acc = stats.accumulators[run]
        run_ridge = choose_ridge(acc) if ridge is None else ridge
        T = solve_lstsq(acc.A, acc.B, run_ridge)
        eye = torch.ones_like(T) if T.dim() == 1 else torch.eye(T.shape[0], dtype=torch.float64)
        fit = RunFit(run.source, list(range(run.first, run.last + 1)), acc.n, _mse(acc, eye), _mse(acc, T),
                     ridge=run_ridge)
        if objective == "cosine":
            if not acc.samples:
                raise DepthpruneError("the cosine objective needs activations: collect statistics with keep_tokens > 0")
            m, h, y = (torch.cat([s[i] for s in acc.samples]) for i in range(3))
            kept = max(kept, m.shape[0])
            with torch.no_grad():
                fit.cos_loss_identity = float(_cos_loss(m, h, y, eye.float()))
                fit.cos_loss_lstsq = float(_cos_loss(m, h, y, T.float()))
            T = refine_cosine(m, h, y, T, steps=cosine_steps)
            with torch.no_grad():
                fit.cos_loss_final = float(_cos_loss(m, h, y, T.float()))
        log.info("linear repair: layers %d-%d after layer %d, mse %.4g -> %.4g", run.first, run.last, run.source,
                 fit.mse_identity, fit.mse_lstsq)
        maps[run.source] = T
        fits.append(fit)
    report = LinearRepairReport(objective, ridge, stats.diagonal, stats.tokens,
                                stats.seconds + time.perf_counter() - start, fits,
                                cosine_steps if objective == "cosine" else None,
                                kept if objective == "cosine" else None)
    return maps, report


def fit_linear_maps(dense: nn.Module, calibration: CalibrationSet, removed: Sequence[int], *,
                    objective: str = "lstsq", ridge: float | None = None, batch_size: int = 8, cosine_steps: int = 30,
                    cosine_tokens: int = 16384, progress: bool = True
                    ) -> tuple[dict[int, torch.Tensor], LinearRepairReport]:
    """Fit one map per maximal removed run on the dense model; returns ``{source layer: T}`` (original numbering)."""
    if objective not in OBJECTIVES:
        raise DepthpruneError(f"unknown repair objective '{objective}'; choose one of {', '.join(OBJECTIVES)}")
    stats = collect_statistics(dense, calibration, removed, keep_tokens=cosine_tokens if objective == "cosine" else 0,
                               batch_size=batch_size, progress=progress)
    return solve_maps(stats, objective=objective, ridge=ridge, cosine_steps=cosine_steps)


class _StreamedMapFit:
    """:class:`_MapFitMetric` for a layer-streamed pass, which sends every batch through a layer before the next
    layer: each batch's ``(m, h)`` at the source layer waits in an :class:`ActivationStore` (in memory up to its
    budget, on disk beyond it) until the run's last layer gives ``y``; the same ``_Accumulator.add`` then takes
    them, batch by batch in the same order as in memory."""

    name = "repair-maps"
    _STRIDE = 1 << 24  # store keys: one range per layer

    def __init__(self, runs: list[Run], captured: dict[int, torch.Tensor], accs: dict[Run, _Accumulator],
                 store: ActivationStore):
        self.by_source = {r.source: r for r in runs}
        self.by_last = {r.last: r for r in runs}
        self.captured, self.accs, self.store = captured, accs, store

    def _key(self, layer: int, batch: int, part: int) -> int:
        return 2 * (layer * self._STRIDE + batch) + part

    def update_batch(self, batch: int, layer: int, x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor
                     ) -> None:
        mask = mask.to(x_out.device, torch.bool)
        if layer in self.by_source:
            m = self.captured.pop(layer).to(x_out.device).reshape(x_out.shape)
            self.store.put(self._key(layer, batch, 0), m[mask])
            self.store.put(self._key(layer, batch, 1), (x_out - m)[mask])
        if layer in self.by_last:
            run = self.by_last[layer]
            m, h = (self.store.get(self._key(run.source, batch, k)) for k in (0, 1))
            self.accs[run].add(m, h, x_out[mask], mask.nonzero()[:, 0], int(mask.shape[0]))
            for k in (0, 1):
                self.store.drop(self._key(run.source, batch, k))


def fit_linear_maps_streamed(streamed: StreamedModel, calibration: CalibrationSet, removed: Sequence[int], *,
                             ridge: float | None = None, batch_size: int = 8, activation_budget_bytes: int = 1 << 30,
                             progress: bool = True) -> tuple[dict[int, torch.Tensor], LinearRepairReport]:
    """:func:`fit_linear_maps` (objective lstsq) for a model read one decoder layer at a time: one streamed pass of
    the dense layers up to the last removed layer. A run's sums exist only from its source layer to its last layer;
    its map is solved as soon as that layer is done and the sums are freed, so memory holds one layer, the
    activations within the budget and the sums of the runs in flight (4 d x d float64 matrices each)."""
    start = time.perf_counter()
    spec = fold_spec(streamed.config)
    runs = removed_runs(removed, streamed.num_layers)
    accs = {r: _Accumulator(spec.diagonal, 0) for r in runs}
    by_last = {r.last: r for r in runs}
    maps: dict[int, torch.Tensor] = {}
    fits: list[RunFit] = []
    half = int(activation_budget_bytes) // 2  # the budget is shared: layer activations and the waiting (m, h)
    store = ActivationStore(half)

    def solve(layer: int) -> None:
        run = by_last.get(layer)
        if run is None:
            return
        part = RunStatistics([run], {run: accs.pop(run)}, spec.diagonal, 0, 0.0)
        solved, report = solve_maps(part, objective="lstsq", ridge=ridge)
        maps[run.source] = solved[run.source].float()
        fits.extend(report.runs)

    try:
        with _capture_mlp_outputs(streamed.layers, [r.source for r in runs], spec) as captured:
            stats = run_layer_metrics_streamed(streamed, calibration, [_StreamedMapFit(runs, captured, accs, store)],
                                               batch_size=batch_size, activation_budget_bytes=half,
                                               progress=progress, last_layer=max(r.last for r in runs),
                                               after_layer=solve)
    finally:
        waiting = {"peak_bytes": store.peak_memory_bytes, "spilled_bytes": store.spilled_bytes}
        store.close()
    report = LinearRepairReport("lstsq", ridge, spec.diagonal, stats.tokens, time.perf_counter() - start, fits,
                                streamed={"layers_read": max(r.last for r in runs) + 1, "bytes_read": stats.bytes_read,
                                          "activation_budget_bytes": int(activation_budget_bytes),
                                          "activation_peak_bytes": stats.activation_peak_bytes,
                                          "activation_spilled_bytes": stats.spilled_bytes,
                                          "source_outputs_peak_bytes": waiting["peak_bytes"],
                                          "source_outputs_spilled_bytes": waiting["spilled_bytes"]})
    return maps, report


def fold_target_names(model: nn.Module, index: int) -> list[str]:
    """The full names of the parameters that :func:`fold_map` changes in decoder layer ``index`` of ``model`` (a
    meta skeleton will do)."""
    spec = fold_spec(model.config)
    layer = layout(model).layers(model)[index]
    prefix = next(name for name, module in model.named_modules() if module is layer)
    paths = [path for path, _ in projections(layer, spec)]
    return [f"{prefix}.{name}" for name, _ in layer.named_parameters()
            if any(name == p or name.startswith(p + ".") for p in paths)]


def unstored_fold_target(model: nn.Module, stored: set[str]) -> str | None:
    """The first parameter a fold would change that the checkpoint does not store under the model's own name (e.g.
    fused expert tensors that transformers builds from per-expert ones on load), or None. A streamed repair writes
    the folded tensors in place of the stored ones, so it needs them stored as the model names them."""
    for index in range(len(layout(model).layers(model))):
        for name in fold_target_names(model, index):
            if name not in stored:
                return name
    return None


def fold_into_streamed_layers(streamed: StreamedModel, maps: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold each map into its source layer read from the checkpoint; returns the changed tensors under their
    checkpoint names, cast back to the checkpoint's dtype (what an in-memory repair saves with ``--save-dtype auto``).
    Only the folded projections change; the rest of the checkpoint is copied byte for byte."""
    spec = fold_spec(streamed.config)
    missing = unstored_fold_target(streamed.model, set(streamed.entries))
    if missing is not None:
        raise DepthpruneError(f"the folded tensor {missing} is stored under other names in the checkpoint; "
                              "repair this model in memory (--offload none)")
    changed: dict[str, torch.Tensor] = {}
    for source, T in sorted(maps.items()):
        names = fold_target_names(streamed.model, source)
        layer = streamed.load_layer(source)
        try:
            fold_map(layer, spec, T)
            params = dict(streamed.model.named_parameters())
            for key in names:
                entry = streamed.entries[key]
                changed[key] = params[key].detach().to(TORCH_DTYPES[entry.dtype]).clone()
        finally:
            streamed.free_layer(source)
    return changed


def fold_linear_maps(pruned: nn.Module, maps: dict[int, torch.Tensor], removed: Sequence[int], total: int) -> None:
    """Fold maps keyed by original source-layer index into ``pruned`` (which has ``removed`` already gone)."""
    spec = fold_spec(pruned.config)
    gone = set(removed)
    new_index = {old: new for new, old in enumerate(i for i in range(total) if i not in gone)}
    layers = layout(pruned).layers(pruned)
    if len(layers) != total - len(gone):
        raise DepthpruneError(f"the pruned model has {len(layers)} layers but {total} minus {len(gone)} removed "
                              f"= {total - len(gone)} were expected")
    for source, T in maps.items():
        fold_map(layers[new_index[source]], spec, T)


def linear_repair(dense: nn.Module, calibration: CalibrationSet, removed: Sequence[int], *, in_place: bool = False,
                  **fit_options) -> tuple[nn.Module, LinearRepairReport]:
    """Fit the maps on ``dense``, remove ``removed`` (a copy unless ``in_place``) and fold the maps in."""
    total = num_layers(dense.config)
    maps, report = fit_linear_maps(dense, calibration, removed, **fit_options)
    pruned = remove_layers(dense, removed) if in_place else pruned_copy(dense, removed)
    fold_linear_maps(pruned, maps, removed, total)
    return pruned, report
