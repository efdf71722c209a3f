"""depthprune: make LLMs shallower (ShortGPT Block Influence layer removal and more).

Layer numbers everywhere are 0-based, in the model's original numbering.
"""

__version__ = "0.1.0"

from .api import PruneResult, as_loaded, evaluate_perplexity, prune, run, score, sweep  # noqa: E402
from .data import CalibrationSet, build_calibration, from_tensors  # noqa: E402
from .errors import DepthpruneError  # noqa: E402
from .models import load_model  # noqa: E402
from .recipe import Recipe  # noqa: E402
from .reports import PruneReport, ScoreReport  # noqa: E402
from .surgery import pruned_copy, remove_layers  # noqa: E402

__all__ = [
    "CalibrationSet", "DepthpruneError", "PruneReport", "PruneResult", "Recipe", "ScoreReport", "as_loaded",
    "build_calibration", "evaluate_perplexity", "from_tensors", "load_model", "prune", "pruned_copy",
    "remove_layers", "run", "score", "sweep",
]

# --- repair (issue 10) ---
from .api import repair  # noqa: E402
from .recipe import RepairRecipe  # noqa: E402

__all__ += ["RepairRecipe", "repair"]
