"""Layer merging instead of removal: LaCo (see :mod:`depthprune.merging.laco`)."""

from .laco import LacoResult, LacoSettings, apply_merges, laco, merged_copy, rdsc_merge, similarity

__all__ = ["LacoResult", "LacoSettings", "apply_merges", "laco", "merged_copy", "rdsc_merge", "similarity"]
