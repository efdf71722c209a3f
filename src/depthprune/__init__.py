"""depthprune: make LLMs shallower (ShortGPT Block Influence layer removal and more).

Layer numbers everywhere are 0-based, in the model's original numbering.

The public names below are imported lazily (PEP 562): ``import depthprune`` stays cheap, so the CLI
answers ``--version``, ``--help`` and usage mistakes without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from depthprune._version import __version__

_EXPORTS = {
    "PruneResult": "api", "as_loaded": "api", "evaluate_perplexity": "api", "prune": "api", "score": "api",
    "sweep": "api",
    "CalibrationSet": "io.data", "build_calibration": "io.data", "from_tensors": "io.data",
    "DepthpruneError": "errors",
    "load_model": "io.models",
    "PruneReport": "reporting.records", "ScoreReport": "reporting.records",
    "pruned_copy": "surgery.in_memory", "remove_layers": "surgery.in_memory",
    "run": "api", "repair": "api", "heads": "api",
    "Recipe": "recipe.schema", "RepairRecipe": "recipe.schema",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from depthprune.api import PruneResult, as_loaded, evaluate_perplexity, heads, prune, repair, run, score, sweep
    from depthprune.recipe.schema import Recipe, RepairRecipe
    from depthprune.io.data import CalibrationSet, build_calibration, from_tensors
    from depthprune.errors import DepthpruneError
    from depthprune.io.models import load_model
    from depthprune.reporting.records import PruneReport, ScoreReport
    from depthprune.surgery.in_memory import pruned_copy, remove_layers


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'depthprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
