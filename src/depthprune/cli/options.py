"""Command-line options generated from the recipe's one declaration (:mod:`depthprune.recipe.schema`).

Every option of every command comes from a field declaration: its flag, help, default, metavar and how a list is
spelt (comma-separated). Values are checked by the recipe schema itself, so a bad value on the command line gets
the same one sentence as the same value in a recipe file. Flags given explicitly override a ``--recipe`` file.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from pydantic import ValidationError
from rich.markup import escape

from depthprune.errors import DepthpruneError
from depthprune.recipe.schema import SECTIONS, VALIDATING, Recipe, command_defaults, field_info, validation_sentence

PARAM_SEPARATOR = "__"  # python parameter name: section__field


def _scalar(annotation) -> tuple[Any, bool]:
    """(the python type typer parses, whether the field is a list) for a field annotation."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        return _scalar(args[0])
    if origin is list:
        return str, True
    if origin is typing.Literal:
        return str, False
    if annotation in (int, float, str, bool):
        return annotation, False
    return str, False


def _choices(annotation) -> list[str]:
    """The allowed values of a Literal field (or a list of Literals), from its annotation."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union and len(args) == 1 or origin is list:
        return _choices(args[0])
    return [str(a) for a in args] if origin is typing.Literal else []


def _help(info: dict, command: str, default_value, default_shown: bool) -> str:
    """The declared help, completed from the declaration itself: the allowed values where the text does not list
    them all, and a default too long for typer's own column. Brackets are escaped: rich would read "[...]" as
    markup and drop it."""
    override = info["commands"].get(command) or {}
    text = override.get("help") or info["help"]
    choices = _choices(info["annotation"])
    if choices and not all(c in text for c in choices):
        text = f"{text.rstrip()} Choices: {', '.join(choices)}."
    if not default_shown and default_value not in (None, ""):  # spaced, so that a narrow terminal can wrap it
        text = f"{text.rstrip()} Default: {str(default_value).replace(',', ', ')}."
    return escape(text)


def recipe_parameters(command: str) -> list[inspect.Parameter]:
    """One keyword parameter per field ``command`` takes, in declaration order."""
    params = []
    for section, cls in SECTIONS.items():
        defaults = command_defaults(cls, command)
        for name in cls.model_fields:
            info = field_info(cls, name)
            if command not in info["commands"]:
                continue
            override = info["commands"][command] or {}
            flag = override.get("flag") or info.get("flag") or "--" + name.replace("_", "-")
            default = defaults.get(name, info["default"])
            kind, is_list = _scalar(info["annotation"])
            show = True
            if is_list:
                shown = None if default is None else ",".join(str(v) for v in default)
                default_value, annotation = shown, Optional[str]
            elif kind is bool:
                default_value, annotation = bool(default), bool
            else:
                default_value, annotation = default, (Optional[kind] if default is None else kind)
            if isinstance(default_value, str) and len(default_value) > 40:
                show = False
            option = typer.Option(default_value, flag, help=_help(info, command, default_value, show),
                                  metavar=override.get("metavar") or info.get("metavar"), show_default=show)
            params.append(inspect.Parameter(f"{section}{PARAM_SEPARATOR}{name}", inspect.Parameter.KEYWORD_ONLY,
                                            annotation=annotation, default=option))
    return params


def with_signature(function: Callable, params: list[inspect.Parameter]) -> Callable:
    """``function(ctx, **values)`` presented to typer with the generated parameters."""
    ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    function.__signature__ = inspect.Signature([ctx, *params])
    function.__annotations__ = {p.name: p.annotation for p in [ctx, *params]}
    return function


def _parse_list(value: str, info: dict, flag: str) -> list:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if info.get("parse") == "csv-int":
        try:
            return [int(v) for v in items]
        except ValueError:
            raise DepthpruneError(f"{flag} must be comma-separated whole numbers, got '{value}'") from None
    return items


def explicit_names(ctx: typer.Context, values: dict) -> set[str]:
    """The parameters the user typed (typer vendors its own click: compare the source by name)."""
    return {name for name in values
            if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}


def build_recipe(ctx: typer.Context, command: str, model: str | None, values: dict, *,
                 recipe_file: Path | None = None) -> Recipe:
    """The recipe a command line describes: the ``--recipe`` file (if any), overridden by the flags typed."""
    explicit = explicit_names(ctx, values)
    if recipe_file is not None:
        recipe = Recipe.from_file(recipe_file)
        if recipe.command != command:
            raise DepthpruneError(f"--recipe {recipe_file} is a recipe for `depthprune {recipe.command}`, not "
                                  f"`depthprune {command}`")
        if model is not None:
            recipe.model = model
    else:
        if model is None:
            raise DepthpruneError("give MODEL (or --recipe FILE to replay a recorded run)")
        recipe = Recipe.for_command(command, model)
    sections: dict[str, dict] = {}
    for key, value in values.items():
        if PARAM_SEPARATOR not in key or (recipe_file is not None and key not in explicit):
            continue
        section, name = key.split(PARAM_SEPARATOR)
        info = field_info(SECTIONS[section], name)
        flag = (info["commands"].get(command) or {}).get("flag") or info.get("flag") or "--" + name.replace("_", "-")
        if value is not None and _scalar(info["annotation"])[1]:
            value = _parse_list(value, info, flag)
        sections.setdefault(section, {})[name] = value
    data = recipe.to_json()
    for section, fields in sections.items():
        data[section] = {**data[section], **fields}
    out = data["output"].get("path")
    if command == "prune" and isinstance(out, str) and out.lower().endswith(".gguf") \
            and f"output{PARAM_SEPARATOR}format" not in explicit:
        data["output"]["format"] = "gguf"  # --out FILE.gguf asks for a GGUF
    chosen = {n for s, n in (k.split(PARAM_SEPARATOR) for k in explicit if PARAM_SEPARATOR in k) if s == "selection"}
    if recipe_file is not None and chosen & {"layers", "remove", "ratio"}:
        # a way of choosing given on the command line replaces the replayed one
        for name in {"layers", "remove", "ratio"} - chosen:
            data["selection"][name] = None
    token = VALIDATING.set(("flags", command))
    try:
        updated = Recipe.model_validate(data, strict=True)
    except ValidationError as exc:
        raise DepthpruneError(validation_sentence(exc, "flags", command)) from None
    finally:
        VALIDATING.reset(token)
    object.__setattr__(updated, "_file_grants", recipe.file_grants)
    object.__setattr__(updated, "_explicit", {tuple(k.split(PARAM_SEPARATOR)) for k in explicit
                                              if PARAM_SEPARATOR in k})
    return updated


__all__ = ["PARAM_SEPARATOR", "build_recipe", "explicit_names", "recipe_parameters", "with_signature"]
