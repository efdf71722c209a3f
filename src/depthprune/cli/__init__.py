"""The command-line interface: one module per command, every option generated from the recipe schema.

Each command builds a recipe from its flags (:mod:`depthprune.cli.options`), runs it through the same plan and
stages as the Python API (:mod:`depthprune.cli.run`) and prints the result (:mod:`depthprune.cli.output`).
"""

from depthprune.cli import bench, eval, heads, prune, repair, report, score, sweep  # noqa: F401 (register)
from depthprune.cli.base import app, command_line, hoist_global_flags, main

__all__ = ["app", "command_line", "hoist_global_flags", "main"]
