"""Which layers go: turn per-layer importance scores into a removal set."""

from __future__ import annotations

import math
from typing import Sequence

from depthprune.errors import DepthpruneError


def check_removal_request(remove: int | None = None, ratio: float | None = None) -> None:
    """The checks that need no model: fail before loading anything."""
    if (remove is None) == (ratio is None):
        raise DepthpruneError("give exactly one of --remove N or --ratio R")
    if ratio is not None and (not (0.0 < ratio < 1.0) or math.isnan(ratio)):
        raise DepthpruneError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
    if remove is not None and remove < 1:
        raise DepthpruneError(f"--remove must be at least 1, got {remove}")


def removal_count(num_layers: int, *, remove: int | None = None, ratio: float | None = None) -> int:
    """How many layers to remove from ``--remove N`` or ``--ratio R`` (floor of R x layers)."""
    check_removal_request(remove, ratio)
    if ratio is not None:
        n = math.floor(ratio * num_layers)
        if n < 1:
            raise DepthpruneError(
                f"--ratio {ratio} of {num_layers} layers removes no layer; use a larger ratio or --remove"
            )
        return n
    assert remove is not None
    if remove < 1 or remove >= num_layers:
        raise DepthpruneError(f"--remove must be between 1 and {num_layers - 1} for a {num_layers}-layer model, got {remove}")
    return remove


def ascending_order(scores: Sequence[float]) -> list[int]:
    """Layer indices from least to most important (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))


def protected_layers(num_layers: int, protect_first: int = 0, protect_last: int = 0) -> set[int]:
    if protect_first < 0 or protect_last < 0:
        raise DepthpruneError("--protect-first and --protect-last must be 0 or more")
    return set(range(min(protect_first, num_layers))) | set(range(max(0, num_layers - protect_last), num_layers))


def select_lowest(scores: Sequence[float], n: int, *, protect_first: int = 0, protect_last: int = 0) -> list[int]:
    """The ``n`` lowest-scoring layers that are not protected, sorted by index (0-based)."""
    total = len(scores)
    protected = protected_layers(total, protect_first, protect_last)
    candidates = [i for i in ascending_order(scores) if i not in protected]
    if n > len(candidates):
        raise DepthpruneError(
            f"cannot remove {n} layers: only {len(candidates)} of {total} are not protected "
            f"(--protect-first {protect_first}, --protect-last {protect_last})"
        )
    return sorted(candidates[:n])
