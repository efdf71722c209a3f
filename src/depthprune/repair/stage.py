"""The repair stage of a run (``Recipe.repair``) and repairing an existing depthprune output directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from torch import nn

from ..architectures import num_layers
from ..data import CalibrationSet, build_calibration
from ..errors import DepthpruneError
from ..recipe import CalibrationRecipe, RepairRecipe
from .families import fold_spec, lora_targets
from .linear import fit_linear_maps, fold_linear_maps, removed_runs
from .lora import lora_repair, repair_data

log = logging.getLogger(__name__)


def check_repairable(repair: RepairRecipe, model: nn.Module, removed: Sequence[int]) -> None:
    """Refuse (one sentence) before any heavy work when the repair cannot be done for this model/removal."""
    if "linear" in repair.methods:
        fold_spec(model.config)
        removed_runs(removed, num_layers(model.config))
    if "lora" in repair.methods:
        lora_targets(model.config)
        try:
            import peft  # noqa: F401
        except ImportError:
            raise DepthpruneError("lora repair needs peft: pip install 'depthprune[repair]'") from None


def run_repair(repair: RepairRecipe, dense: nn.Module, pruned: nn.Module, removed: Sequence[int], *,
               calibration: CalibrationSet | None, tokenizer, batch_size: int = 8,
               progress: bool = True) -> tuple[nn.Module, dict]:
    """Apply ``repair.methods`` in order to ``pruned`` (= ``dense`` minus ``removed``); returns the model and a report.

    ``dense`` is read, never changed: linear fits on its activations over ``calibration``; ``distill`` uses
    its logits as the teacher.
    """
    report: dict = {"methods": list(repair.methods), "settings": {k: v for k, v in vars(repair).items()}}
    if "linear" in repair.methods:
        if calibration is None:
            raise DepthpruneError("linear repair needs the calibration text; give --data SPEC")
        maps, linear = fit_linear_maps(dense, calibration, removed, objective=repair.objective, ridge=repair.ridge,
                                       batch_size=batch_size, cosine_steps=repair.cosine_steps, progress=progress)
        fold_linear_maps(pruned, maps, removed, num_layers(dense.config))
        report["linear"] = linear.to_json()
    if "lora" in repair.methods:
        train, held = repair_data(tokenizer, repair.data, tokens=repair.tokens, seq_len=repair.seq_len,
                                  seed=repair.seed)
        pruned, lora = lora_repair(pruned, train, held, teacher=dense if repair.distill else None, rank=repair.rank,
                                   alpha=repair.alpha, lr=repair.lr, batch_size=repair.batch_size,
                                   eval_every=repair.eval_every, seed=repair.seed, progress=progress)
        report["lora"] = {**lora.to_json(), "data": dict(train.settings)}
    return pruned, report


def heldout_verdict(ppl: dict) -> dict | None:
    """Held-out perplexity before vs after the repair (``ppl`` holds ``unrepaired`` and ``pruned`` results);
    warns when the repair did not lower it: the saved model is still the repaired one the user asked for."""
    before, after = ppl.get("unrepaired"), ppl.get("pruned")
    if not before or not after:
        return None
    verdict = {"unrepaired_ppl": before["ppl"], "repaired_ppl": after["ppl"], "improved": after["ppl"] < before["ppl"]}
    if not verdict["improved"]:
        log.warning("the repair did not lower held-out perplexity (%.3f unrepaired, %.3f repaired); the output holds "
                    "the repaired model as asked: compare another --repair method or objective, or calibration text "
                    "closer to the evaluated text", before["ppl"], after["ppl"])
    return verdict


def read_output(pruned_dir: str | Path) -> dict:
    """The ``depthprune.json`` of a depthprune output directory; a clear error if it is not one."""
    path = Path(pruned_dir).expanduser() / "depthprune.json"
    if not path.is_file():
        raise DepthpruneError(f"{pruned_dir} is not a depthprune output directory (no depthprune.json); "
                              "give the --out directory of a depthprune prune run")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DepthpruneError(f"cannot read {path}: {exc}") from None


def calibration_recipe_of(report: dict) -> CalibrationRecipe:
    """The calibration the original run used (from its recorded recipe, else from its calibration settings)."""
    recorded = (report.get("recipe") or {}).get("calibration")
    if recorded:
        return CalibrationRecipe(**{k: v for k, v in recorded.items() if k in CalibrationRecipe.__dataclass_fields__})
    cal = report.get("calibration") or {}
    if not cal.get("source"):
        raise DepthpruneError("the output records no calibration text; give --data SPEC")
    return CalibrationRecipe(data=cal["source"], samples=int(cal.get("requested_samples", cal.get("samples", 128))),
                             seq_len=int(cal.get("seq_len", 512)), seed=int(cal.get("seed", 0)))


def build_repair_calibration(cal: CalibrationRecipe, tokenizer, dense: nn.Module, progress: bool) -> CalibrationSet:
    return build_calibration(cal.data, tokenizer, samples=cal.samples, seq_len=cal.seq_len, seed=cal.seed,
                             text_field=cal.text_field, model=dense, batch_size=cal.batch_size, progress=progress)
