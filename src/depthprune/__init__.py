"""depthprune: make LLMs shallower."""

__version__ = "0.1.0"
