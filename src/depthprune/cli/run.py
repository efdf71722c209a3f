"""The one path from a command line to a finished run: flags -> recipe -> plan -> stages."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Optional

import typer

from depthprune.cli.base import STATE, app, command_line, err_console, progress_enabled
from depthprune.cli.options import build_recipe, recipe_parameters, with_signature

RECIPE_HELP = ("Replay a recipe: a recipe JSON or a previous run's depthprune.json (or its directory); flags given "
               "here override it. A recipe file never grants --trust-remote-code or --overwrite.")


def run_command(ctx: typer.Context, command: str, model: str | None, values: dict, recipe_file: Path | None):
    """Build the recipe the command line describes, plan it and run it; returns the final run state."""
    # The API (and with it torch and transformers) is imported only now, so that --help, --version and usage
    # mistakes answer at once.
    from depthprune.api import execute_recipe

    recipe = build_recipe(ctx, command, model, values, recipe_file=recipe_file)
    for grant in recipe.file_grants:
        flag = "--trust-remote-code" if grant.endswith("trust_remote_code") else "--overwrite"
        err_console.print(f"note: the recipe file asks for {grant}, which only the command line can grant; "
                          f"pass {flag} to allow it", highlight=False)
    return execute_recipe(recipe, command=command_line(), progress=progress_enabled(),
                          recipe_source=recipe_file, require_output=True, started=STATE.get("started"))


def command(name: str, *, model_help: str, doc: str, printer: Callable, needs_out: str | None = None) -> None:
    """Register ``depthprune NAME``: MODEL, --recipe and the options generated from the schema; ``printer(state)``
    prints the result. ``needs_out``: what --out names, for commands that cannot run without it."""

    def handler(ctx: typer.Context, **values) -> None:
        model = values.pop("model")
        recipe_file = values.pop("recipe_file")
        if model is None and recipe_file is None:  # a usage mistake: the usage line and one sentence, exit 2
            ctx.fail("Missing argument 'MODEL' (or give --recipe FILE to replay a recorded run).")
        if needs_out and values.get("output__path") is None:
            ctx.fail(f"Missing option '--out' ({needs_out})" + (": a replayed recipe never writes over its original "
                                                                "output" if recipe_file is not None else "."))
        printer(run_command(ctx, name, model, values, recipe_file))

    model_param = inspect.Parameter(
        "model", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
        default=typer.Argument(None, metavar="MODEL", help=model_help, show_default=False))
    recipe_param = inspect.Parameter(
        "recipe_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
        default=typer.Option(None, "--recipe", metavar="FILE", help=RECIPE_HELP))
    handler.__doc__ = doc
    handler.__name__ = name
    app.command(name)(with_signature(handler, [model_param, recipe_param, *recipe_parameters(name)]))


__all__ = ["command", "run_command"]
