"""``python -m depthprune``: the command-line interface."""

from depthprune.cli import main

main()
