"""The stages every command is made of, registered by name (see :mod:`depthprune.pipeline.runner`)."""

from depthprune.pipeline.stages import measure, model, prune, search, write

STAGES: dict = {**model.STAGES, **prune.STAGES, **search.STAGES, **measure.STAGES, **write.STAGES}

__all__ = ["STAGES"]
