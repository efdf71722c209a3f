"""Scaling past one device's memory and past one process.

* :mod:`.checkpoint`: prune a safetensors checkpoint on disk without loading the model.
* :mod:`.streamed`: layer-streamed scoring (one decoder layer in memory at a time).
* :mod:`.distributed`: data-parallel scoring under ``torchrun`` (metric sums all-reduced).
"""

from .checkpoint import CheckpointPruneResult, prune_checkpoint

__all__ = ["CheckpointPruneResult", "prune_checkpoint"]
