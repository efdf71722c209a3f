"""Width redundancy: importance of attention heads / KV groups, their pattern statistics, head removal.

See :mod:`depthprune.width.heads` (numbering, masking, removal), :mod:`depthprune.width.importance`
(scores and statistics) and :mod:`depthprune.width.run` (the ``depthprune heads`` command as a function).
"""

from .heads import (HeadGeometry, attention_parameter_share, geometry, groups_to_heads, heads_removed_copy,
                    masked_heads, removable, remove_heads)
from .importance import (HEAD_METRICS, UNITS, HeadReport, head_pattern, head_report, layer_pattern, loss_increase,
                         lowest_units, oproj_norms, spearman, split_halves)
from .run import HeadRemoval, remove_lowest_heads, save_heads, score_heads

__all__ = ["HEAD_METRICS", "UNITS", "HeadGeometry", "HeadRemoval", "HeadReport", "attention_parameter_share",
           "geometry", "groups_to_heads", "head_pattern", "head_report", "heads_removed_copy", "layer_pattern",
           "loss_increase", "lowest_units", "masked_heads", "oproj_norms", "removable", "remove_heads",
           "remove_lowest_heads", "save_heads", "score_heads", "spearman", "split_halves"]
