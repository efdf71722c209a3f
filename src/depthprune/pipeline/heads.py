"""`depthprune heads` as a function: score heads, optionally remove the lowest ones, write the outputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from depthprune.errors import DepthpruneError
from depthprune.evaluation.perplexity import perplexity
from depthprune.surgery.heads import geometry, heads_removed_copy, masked_heads, removable, attention_parameter_share
from depthprune.importance.heads import HeadReport, lowest_units

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


def remove_lowest_heads(model: nn.Module, tokenizer, report: HeadReport, *, per_layer: int, unit: str = "group",
                        select_by: str = "loss", ppl: str | None = None, ppl_seq_len: int = 512,
                        ppl_max_tokens: int = 4096, progress: bool = True) -> tuple[HeadRemoval, nn.Module | None]:
    """Remove the ``per_layer`` least important units (by ``select_by`` over both halves) of every layer.
    Returns the removal record and the head-removed copy (None when only a masked evaluation was possible)."""
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


__all__ = ["HeadRemoval", "remove_lowest_heads"]
