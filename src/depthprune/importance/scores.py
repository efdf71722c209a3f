"""Per-layer scores by metric name: every streaming metric from one forward pass, ``ppl``/``taylor`` on their own."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from torch import nn

from depthprune.arch.layout import layout
from depthprune.importance.loss_metrics import ppl_scores, taylor_scores
from depthprune.importance.metrics import STREAMING_METRICS, AngularDistance, check_metric, make_metric
from depthprune.importance.scoring import run_layer_metrics
from depthprune.io.data import CalibrationSet

DATA_FREE = {"reverse-order", "random"}


@dataclass
class MetricScores:
    """One metric's per-layer scores (0-based, original numbering; higher = more important)."""

    metric: str
    scores: list[float]
    blocks: dict[int, list[float]] | None = None  # angular: block size n -> distance per start layer
    tokens: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def compute_scores(model: nn.Module, calibration: CalibrationSet, metrics: Sequence[str], *, batch_size: int = 8,
                   seed: int = 0, block_sizes: Sequence[int] = (1,), progress: bool = True) -> dict[str, MetricScores]:
    """Scores for each named metric: every streaming metric from ONE forward pass, ``ppl``/``taylor`` on their own."""
    for m in metrics:
        check_metric(m)
    n_layers = len(layout(model).layers(model))
    streaming = [m for m in dict.fromkeys(metrics) if m in STREAMING_METRICS]
    out: dict[str, MetricScores] = {}
    if streaming:
        objs = [make_metric(m, n_layers, seed=seed, block_sizes=block_sizes) for m in streaming]
        if set(streaming) <= DATA_FREE:  # reverse-order / random: no forward pass needed
            tokens = 0
        else:
            tokens = run_layer_metrics(model, calibration, objs, batch_size=batch_size, progress=progress)
        for obj in objs:
            blocks = obj.block_result() if isinstance(obj, AngularDistance) else None
            out[obj.name] = MetricScores(obj.name, [float(v) for v in obj.result()], blocks, tokens)
    tokens = int(calibration.attention_mask.sum())
    if "ppl" in metrics:
        out["ppl"] = MetricScores("ppl", ppl_scores(model, calibration, batch_size=batch_size, progress=progress),
                                  tokens=tokens)
    if "taylor" in metrics:
        out["taylor"] = MetricScores("taylor", taylor_scores(model, calibration, batch_size=batch_size,
                                                             progress=progress), tokens=tokens)
    return {m: out[m] for m in metrics}


__all__ = ["DATA_FREE", "MetricScores", "compute_scores"]
