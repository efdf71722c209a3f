"""Importance of every attention head (or KV group) in every layer, and the statistics that test
ShortGPT's claim that width redundancy, unlike depth redundancy, follows no clear pattern.

Scores (higher = more important; layers 0-based original numbering, heads/groups 0-based within
the layer; see :mod:`depthprune.width.heads` for the grouping):

* ``loss``: increase of the mean calibration next-token loss when the unit is masked. One partial
  pass per unit with :class:`depthprune.loss_metrics.CachedLayerRunner`: the layers before the
  masked one are not re-run (their outputs are cached).
* ``oproj-norm``: one forward pass; the mean over real (non-pad) tokens of the L2 norm of the unit's
  contribution to the attention output, ``x_h @ W_o[:, h]^T`` (for a KV group, the sum over its
  query heads), read by a forward pre-hook on ``o_proj``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from depthprune.io.data import CalibrationSet
from depthprune.errors import NOTE, DepthpruneError
from depthprune.importance.loss_metrics import CachedLayerRunner
from depthprune.arch.layout import input_device
from depthprune.arch.heads import HeadGeometry, attention_modules, geometry, masked_heads
from depthprune.importance.scores import compute_scores

log = logging.getLogger(__name__)

HEAD_METRICS = ("loss", "oproj-norm")
UNITS = ("group", "query")  # KV group / single query head


def check_units(units: Sequence[str]) -> list[str]:
    bad = [u for u in units if u not in UNITS]
    if bad:
        raise DepthpruneError(f"unknown head unit '{bad[0]}': choose group (KV group) or query (query head)")
    return list(dict.fromkeys(units))


def unit_heads(unit: str, index: int, geo: HeadGeometry) -> list[int]:
    """The query heads masked for one unit."""
    return geo.group_heads(index) if unit == "group" else [index]


def unit_count(unit: str, geo: HeadGeometry) -> int:
    return geo.num_kv_heads if unit == "group" else geo.num_heads


def loss_increase(model: nn.Module, calibration: CalibrationSet, unit: str = "group", *, batch_size: int = 8,
                  runner: CachedLayerRunner | None = None, progress: bool = True) -> list[list[float]]:
    """[layer][unit]: mean calibration NLL with that unit masked minus the dense mean NLL."""
    check_units([unit])
    geo = geometry(model)
    runner = runner or CachedLayerRunner(model, calibration, batch_size=batch_size, progress=progress)
    if runner.removed:
        raise DepthpruneError("head scores need a runner without removed layers")
    dense = runner.loss_without(None)
    out = []
    for layer in tqdm(range(geo.num_layers), desc=f"loss with each {unit} masked", disable=not progress,
                      unit="layer"):
        row = []
        for u in range(unit_count(unit, geo)):
            with masked_heads(model, {layer: unit_heads(unit, u, geo)}):
                row.append(runner.loss_from(layer) - dense)
        out.append(row)
    return out


def oproj_norms(model: nn.Module, calibration: CalibrationSet, units: Sequence[str] = ("group", "query"), *,
                batch_size: int = 8, progress: bool = True) -> dict[str, list[list[float]]]:
    """{unit: [layer][unit]}: mean over real tokens of ||contribution of the unit through o_proj||_2."""
    units = check_units(units)
    geo = geometry(model)
    mods = attention_modules(model)
    device = input_device(model)
    sums = {u: torch.zeros(geo.num_layers, unit_count(u, geo), dtype=torch.float64) for u in units}
    state: dict[str, torch.Tensor] = {}

    def hook(index):
        def fn(module, args):
            x = args[0]
            b, t, _ = x.shape
            w = module.weight.view(module.out_features, geo.num_heads, geo.head_dim)
            contrib = torch.einsum("bthd,ohd->btho", x.view(b, t, geo.num_heads, geo.head_dim).float(), w.float())
            keep = state["mask"].to(contrib.device).bool()
            for u in units:
                c = contrib if u == "query" else contrib.view(b, t, geo.num_kv_heads, geo.group_size, -1).sum(3)
                norms = c.norm(dim=-1)[keep]  # (real tokens, units)
                sums[u][index] += norms.sum(0, dtype=torch.float64).cpu()
        return fn

    handles = [m.o_proj.register_forward_pre_hook(hook(i)) for i, m in enumerate(mods)]
    tokens = 0
    try:
        with torch.inference_mode():
            for ids, mask in tqdm(calibration.batches(batch_size), total=calibration.num_batches(batch_size),
                                  desc="o_proj head norms", disable=not progress, unit="batch"):
                state["mask"] = mask
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return {u: (s / tokens).tolist() for u, s in sums.items()}


# -- pattern statistics ----------------------------------------------------------------------------

def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):  # average ranks for ties
        idx = np.where(x == v)[0]
        if len(idx) > 1:
            ranks[idx] = ranks[idx].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant or n < 2."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError("spearman needs two sequences of the same length")
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def head_pattern(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]] | None = None) -> dict:
    """Pattern statistics of a [layer][head] score matrix ``a`` (``b``: the same scores on a disjoint
    calibration set).

    * ``split_half_spearman``: rank correlation of all layer x head scores between ``a`` and ``b``;
    * ``split_half_within_layer_spearman``: mean over layers of the rank correlation of the heads of
      one layer between ``a`` and ``b`` (is *which head* matters in a layer reproducible?);
    * ``neighbour_layer_spearman``: rank correlation of the pairs (a[l][h], a[l+1][h]);
    * ``depth_spearman``: rank correlation of each score with its layer index;
    * ``between_layer_share``: variance of the layer means / total variance (1 = all spread is
      across layers, 0 = all within layers); ``within_layer_std`` (mean over layers of the std
      across heads) and ``across_layer_std`` (std of the layer means), each divided by the mean score.
    """
    m = np.asarray(a, dtype=np.float64)
    layers, heads = m.shape
    out: dict = {}
    if b is not None:
        mb = np.asarray(b, dtype=np.float64)
        out["split_half_spearman"] = spearman(m, mb)
        out["split_half_within_layer_spearman"] = _nanmean([spearman(m[i], mb[i]) for i in range(layers)]) \
            if heads > 2 else float("nan")
    out["neighbour_layer_spearman"] = spearman(m[:-1], m[1:]) if layers > 1 else float("nan")
    out["depth_spearman"] = spearman(np.repeat(np.arange(layers), heads), m)
    total_var = m.var()
    means = m.mean(1)
    out["between_layer_share"] = float(means.var() / total_var) if total_var > 0 else float("nan")
    scale = abs(m.mean()) or 1.0
    out["within_layer_std"] = float(m.std(1).mean() / scale)
    out["across_layer_std"] = float(means.std() / scale)
    return out


def layer_pattern(a: Sequence[float], b: Sequence[float] | None = None) -> dict:
    """The same statistics for one score per layer (layer importance): split-half, neighbour, depth."""
    v = np.asarray(a, dtype=np.float64)
    out: dict = {}
    if b is not None:
        out["split_half_spearman"] = spearman(v, b)
    out["neighbour_layer_spearman"] = spearman(v[:-1], v[1:]) if len(v) > 2 else float("nan")
    out["depth_spearman"] = spearman(np.arange(len(v)), v)
    scale = abs(v.mean()) or 1.0
    out["across_layer_std"] = float(v.std() / scale)
    return out


@dataclass
class HeadReport:
    """Head importance of one model, on two disjoint calibration halves, with pattern statistics."""

    model: str
    model_type: str | None
    geometry: dict
    scores: dict          # "metric/unit" -> {"a": [layer][unit], "b": [layer][unit]}
    layer_scores: dict    # "bi" / "loss" -> {"a": [layer], "b": [layer]}
    patterns: dict        # "metric/unit" or "layer:metric" -> statistics
    calibration: dict
    indexing: str = ("layers 0-based original numbering; query heads 0-based within a layer; "
                     "KV group g = query heads g*q..g*q+q-1")
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def combined(self, key: str) -> list[list[float]]:
        """The mean of both halves (all calibration data) for ``metric/unit``."""
        a, b = np.asarray(self.scores[key]["a"]), np.asarray(self.scores[key]["b"])
        return ((a + b) / 2).tolist()


def split_halves(calibration: CalibrationSet) -> tuple[CalibrationSet, CalibrationSet]:
    """Two disjoint calibration sets: the even and the odd sequences."""
    if len(calibration) < 2:
        raise DepthpruneError("head pattern statistics need at least 2 calibration sequences (two disjoint halves)")
    ids, mask = calibration.input_ids, calibration.attention_mask
    settings = dict(calibration.settings)
    return (CalibrationSet(ids[0::2], mask[0::2], {**settings, "half": "even rows"}),
            CalibrationSet(ids[1::2], mask[1::2], {**settings, "half": "odd rows"}))


def masked_loss_passes(geo: HeadGeometry, units: Sequence[str]) -> float:
    """Full forward passes (over one half of the calibration) the masked-loss scores cost: each masked unit and each
    skipped layer reruns the layers from its own to the last, (L + 1) / 2 layers on average, of L."""
    masked = 1 + sum(unit_count(u, geo) for u in units)  # the layer itself, then each of its units
    return 1 + masked * (geo.num_layers + 1) / 2


def _announce_cost(seconds_per_pass: float, geo: HeadGeometry, units: Sequence[str], sequences: int) -> None:
    passes = masked_loss_passes(geo, units)
    total = 2 * passes * seconds_per_pass  # two halves
    log.log(NOTE, "heads: the masked-loss scores cost about %.0f forward passes over each half (%d sequences); the "
            "first (caching every layer's input) took %.1f s, so about %s for both halves", passes, sequences, seconds_per_pass,
            f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s")


def head_report(model: nn.Module, calibration: CalibrationSet, *, metrics: Sequence[str] = HEAD_METRICS,
                units: Sequence[str] = UNITS, batch_size: int = 8, source: str = "",
                progress: bool = True) -> HeadReport:
    """Head scores on both halves of ``calibration`` and the pattern statistics next to layer importance
    (BI and the loss increase when the whole layer is skipped, on the same halves)."""
    bad = [m for m in metrics if m not in HEAD_METRICS]
    if bad:
        raise DepthpruneError(f"unknown head metric '{bad[0]}': choose from {', '.join(HEAD_METRICS)}")
    units = check_units(units)
    geo = geometry(model)
    halves = split_halves(calibration)
    scores: dict = {}
    layer_scores: dict = {"bi": {}, "loss": {}}
    for tag, half in zip("ab", halves):
        layer_scores["bi"][tag] = compute_scores(model, half, ["bi"], batch_size=batch_size,
                                                 progress=progress)["bi"].scores
        if "oproj-norm" in metrics:
            for u, m in oproj_norms(model, half, units, batch_size=batch_size, progress=progress).items():
                scores.setdefault(f"oproj-norm/{u}", {})[tag] = m
        if "loss" in metrics:
            started = time.perf_counter()
            runner = CachedLayerRunner(model, half, batch_size=batch_size, progress=progress)  # one full pass
            if tag == "a":
                _announce_cost(time.perf_counter() - started, geo, units, len(half))
            dense = runner.loss_without(None)
            layer_scores["loss"][tag] = [runner.loss_without(i) - dense for i in range(geo.num_layers)]
            for u in units:
                scores.setdefault(f"loss/{u}", {})[tag] = loss_increase(model, half, u, runner=runner,
                                                                       progress=progress)
    layer_scores = {k: v for k, v in layer_scores.items() if v}
    patterns = {k: head_pattern(v["a"], v["b"]) for k, v in scores.items()}
    patterns.update({f"layer:{k}": layer_pattern(v["a"], v["b"]) for k, v in layer_scores.items()})
    notes = []
    if geo.num_kv_heads == 1 and "group" in units:
        notes.append("one KV group per layer: group scores are whole-attention scores, with no within-layer spread")
    return HeadReport(
        model=source or getattr(model.config, "_name_or_path", type(model).__name__),
        model_type=getattr(model.config, "model_type", None),
        geometry={"num_layers": geo.num_layers, "num_heads": geo.num_heads, "num_kv_heads": geo.num_kv_heads,
                  "head_dim": geo.head_dim, "group_size": geo.group_size},
        scores=scores, layer_scores=layer_scores, patterns=patterns,
        calibration={**dict(calibration.settings), "halves": "even / odd sequences",
                     "sequences_per_half": [len(h) for h in halves]},
        notes=notes)


def lowest_units(scores: Sequence[Sequence[float]], per_layer: int, unit: str, geo: HeadGeometry,
                 *, total: int | None = None) -> dict[int, list[int]]:
    """Query heads to remove: the ``per_layer`` lowest units of every layer ({layer: query heads}),
    or with ``total`` the ``total`` lowest units anywhere (masked evaluation only, usually)."""
    m = np.asarray(scores, dtype=np.float64)
    out: dict[int, list[int]] = {}
    if total is None:
        for layer in range(m.shape[0]):
            picks = sorted(np.argsort(m[layer], kind="mergesort")[:per_layer].tolist())
            out[layer] = sorted(h for u in picks for h in unit_heads(unit, u, geo))
    else:
        flat = np.argsort(m.ravel(), kind="mergesort")[:total]
        for f in flat.tolist():
            layer, u = divmod(f, m.shape[1])
            out.setdefault(layer, []).extend(unit_heads(unit, u, geo))
        out = {k: sorted(v) for k, v in sorted(out.items())}
    return out


__all__ = ["HEAD_METRICS", "UNITS", "HeadReport", "head_pattern", "head_report", "layer_pattern", "loss_increase",
           "lowest_units", "oproj_norms", "spearman", "split_halves"]
