"""The stages every command is made of, registered by name (see :mod:`depthprune.pipeline.runner`)."""

from depthprune.pipeline.stages import measure, model, prune, write

STAGES: dict = {**model.STAGES, **prune.STAGES, **measure.STAGES, **write.STAGES}

__all__ = ["STAGES"]
