"""depthprune: make LLMs shallower (ShortGPT Block Influence layer removal and more).

Layer numbers everywhere are 0-based, in the model's original numbering.

The public names below are imported lazily (PEP 562): ``import depthprune`` stays cheap, so the CLI
answers ``--version``, ``--help`` and usage mistakes without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PruneResult": "api", "as_loaded": "api", "evaluate_perplexity": "api", "prune": "api", "score": "api",
    "sweep": "api",
    "CalibrationSet": "data", "build_calibration": "data", "from_tensors": "data",
    "DepthpruneError": "errors",
    "load_model": "models",
    "PruneReport": "reports", "ScoreReport": "reports",
    "pruned_copy": "surgery", "remove_layers": "surgery",
    "run": "api", "repair": "api", "heads": "api",
    "Recipe": "recipe", "RepairRecipe": "recipe",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .api import PruneResult, as_loaded, evaluate_perplexity, heads, prune, repair, run, score, sweep
    from .recipe import Recipe, RepairRecipe
    from .data import CalibrationSet, build_calibration, from_tensors
    from .errors import DepthpruneError
    from .models import load_model
    from .reports import PruneReport, ScoreReport
    from .surgery import pruned_copy, remove_layers


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'depthprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
