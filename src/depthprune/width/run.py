"""`depthprune heads` as a function: score heads, optionally remove the lowest ones, write the outputs."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from torch import nn

from ..data import CalibrationSet, validate_spec
from ..errors import DepthpruneError
from .heads import geometry, heads_removed_copy, masked_heads, removable, attention_parameter_share
from .importance import HEAD_METRICS, UNITS, HeadReport, head_report, lowest_units

log = logging.getLogger(__name__)


@dataclass
class HeadRemoval:
    """Which heads go and what that did (``saved`` only when a plain checkpoint could express it)."""

    unit: str
    per_layer: int
    select_by: str
    heads: dict[int, list[int]]   # layer -> query heads removed
    parameter_share: float
    checkpoint: bool              # True: removed physically (saved); False: evaluated masked only
    reason: str | None            # why not a checkpoint
    perplexity: dict              # {"dense": ..., "heads_removed"|"heads_masked": ...}

    def to_json(self) -> dict:
        from dataclasses import asdict

        data = asdict(self)
        data["heads"] = {str(k): v for k, v in self.heads.items()}
        return data


def score_heads(model, tokenizer=None, *, data: str | CalibrationSet = "builtin", samples: int = 16,
                seq_len: int = 128, batch_size: int = 8, seed: int = 0, text_field: str = "text",
                metrics: Sequence[str] = HEAD_METRICS, units: Sequence[str] = UNITS, dtype: str = "float32",
                device: str = "cpu", progress: bool = True) -> tuple[HeadReport, object]:
    """Head importance on ``samples`` calibration sequences split into two disjoint halves.
    Returns (report, loaded model) so that a caller can go on to remove heads without reloading."""
    from ..api import as_loaded, calibration_set
    from .importance import check_units

    bad = [m for m in metrics if m not in HEAD_METRICS]
    if bad:
        raise DepthpruneError(f"unknown head metric '{bad[0]}': choose from {', '.join(HEAD_METRICS)}")
    check_units(units)
    if isinstance(data, str):
        validate_spec(data)
    loaded = as_loaded(model, tokenizer, dtype=dtype, device=device)
    geometry(loaded.model)  # unsupported attention: fail before any data work
    calibration = calibration_set(loaded, data, samples=samples, seq_len=seq_len, seed=seed, text_field=text_field,
                                  batch_size=batch_size, progress=progress)
    report = head_report(loaded.model, calibration, metrics=metrics, units=units, batch_size=batch_size,
                         source=loaded.source, progress=progress)
    return report, loaded


def remove_lowest_heads(model: nn.Module, tokenizer, report: HeadReport, *, per_layer: int, unit: str = "group",
                        select_by: str = "loss", ppl: str | None = None, ppl_seq_len: int = 512,
                        ppl_max_tokens: int = 4096, progress: bool = True) -> tuple[HeadRemoval, nn.Module | None]:
    """Remove the ``per_layer`` least important units (by ``select_by`` over both halves) of every layer.
    Returns the removal record and the head-removed copy (None when only a masked evaluation was possible)."""
    from ..evaluation import perplexity

    key = f"{select_by}/{unit}"
    if key not in report.scores:
        raise DepthpruneError(f"the head report has no '{key}' scores; score with --metrics {select_by} --units {unit}")
    geo = geometry(model)
    heads = lowest_units(report.combined(key), per_layer, unit, geo)
    why = removable(heads, geo, getattr(model.config, "hidden_size", None))
    result: dict = {}

    def measure(m) -> dict:
        return perplexity(m, tokenizer, ppl, seq_len=ppl_seq_len, max_tokens=ppl_max_tokens, progress=progress).to_json()

    if ppl is not None:
        result["dense"] = measure(model)
    pruned = None
    if why is None:
        pruned = heads_removed_copy(model, heads)
        if ppl is not None:
            result["heads_removed"] = measure(pruned)
    elif ppl is not None:
        with masked_heads(model, heads):
            result["heads_masked"] = measure(model)
    record = HeadRemoval(unit, per_layer, select_by, heads, attention_parameter_share(model, heads), why is None,
                         why, result)
    return record, pruned


def save_heads(report: HeadReport, out: str | Path, *, removal: HeadRemoval | None = None,
               pruned: nn.Module | None = None, tokenizer=None, overwrite: bool = False) -> Path:
    """Write heads.json, heads.png (layer x head heatmaps) and, for a removal a checkpoint can express,
    the head-removed checkpoint in ``model/``; atomically."""
    from ..export import atomic_directory
    from .plots import plot_head_heatmaps

    with atomic_directory(out, overwrite) as tmp:
        data = report.to_json()
        if removal is not None:
            data["removal"] = removal.to_json()
        (tmp / "heads.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        panels = [(f"{k} (mean of halves)", report.combined(k)) for k in sorted(report.scores)]
        if panels:
            plot_head_heatmaps(panels, tmp / "heads.png",
                               title=f"{report.model}: head importance (higher = more important)")
        if pruned is not None:
            pruned.save_pretrained(tmp / "model", safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / "model")
            (tmp / "model" / "depthprune.json").write_text(
                json.dumps({"model": report.model, "head_removal": removal.to_json() if removal else None},
                           indent=2) + "\n", encoding="utf-8")
    return Path(out).expanduser()


__all__ = ["HeadRemoval", "remove_lowest_heads", "save_heads", "score_heads"]
