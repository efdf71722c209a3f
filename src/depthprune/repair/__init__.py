"""Repair after layer removal: training-free linear replacement folded into the weights, and LoRA healing.

Both return a model of the plain architecture (no extra modules): it saves with ``save_pretrained`` and
reloads with ``AutoModelForCausalLM.from_pretrained``.
"""

from depthprune.repair.families import FOLD_SPECS, LORA_TARGETS, FoldSpec, fold_spec, lora_targets
from depthprune.repair.folding import fold_map
from depthprune.repair.linear import (OBJECTIVES, LinearRepairReport, Run, RunStatistics, accumulator_bytes,
                                      block_runs, collect_statistics, fit_linear_maps, fold_linear_maps, linear_repair,
                                      removed_runs, repaired_error, solve_lstsq, solve_maps, statistics_of)
from depthprune.repair.lora import LoraRepairReport, lora_repair, repair_data

__all__ = ["LoraRepairReport", "RunStatistics", "collect_statistics", "lora_repair", "repair_data", "solve_maps",
           "FOLD_SPECS", "LORA_TARGETS", "FoldSpec", "LinearRepairReport", "OBJECTIVES", "Run", "fit_linear_maps",
           "fold_linear_maps", "fold_map", "fold_spec", "linear_repair", "lora_targets", "removed_runs", "solve_lstsq",
           "accumulator_bytes", "block_runs", "repaired_error", "statistics_of"]
