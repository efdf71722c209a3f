"""The recipe reference (docs/recipe.md) and JSON schema (docs/recipe.schema.json), generated from the schema.

Every row comes from the field's one declaration in :mod:`depthprune.recipe.schema` (type, bounds, default, the
flag and default per command, the stage that consumes it, the help text), so the reference cannot drift from the
command line or from what recipe files accept::

    python -m depthprune.recipe.docs --write   # regenerate both files
    python -m depthprune.recipe.docs --check   # exit 1 when either is stale (tests/test_recipe_docs.py checks it too)

Recipe is the lowest layer of the package: this module imports only the recipe schema and the errors.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing
from pathlib import Path

import annotated_types

from depthprune.recipe.schema import COMMANDS, GRANTS, SECTIONS, Recipe, field_info, flag_of

# The checkout's docs/ folder (src/depthprune/recipe/docs.py -> the repository root); --docs overrides it.
REPO = Path(__file__).resolve().parents[3]
DOCS = REPO / "docs"
WRITE_COMMAND = "python -m depthprune.recipe.docs --write"

# The fields of the recipe itself that are not sections (rows of the first table): how each is set and what
# reads it. Sections declare this per field with opt(); these three are the recipe's frame.
TOP_FIELDS = {
    "model": ("positional MODEL of every command", "plan"),
    "command": ("the command itself (`depthprune CMD`)", "plan"),
    "version": ("-", "recipe"),
}
TOP_HELP = {"command": "The command this recipe runs; it picks the per-command defaults and the plan's stages.",
            "version": "Recipe format version; older versions are upgraded when read."}


def _type(annotation) -> str:
    """A field's type as the reader writes it in JSON: ``int or null``, ``list of int``, one of the choices."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(args):
            return _type(rest[0]) + " or null"
        return " or ".join(_type(a) for a in rest)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        inner = _type(args[0]) if args else "any"
        return f"list of ({inner})" if inner.startswith("one of") else f"list of {inner}"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation,
                                                                               getattr(annotation, "__name__",
                                                                                       str(annotation)))


def _bounds(metadata: list) -> str:
    """The declared bounds (``>= 1``, ``0 < x < 1``, ``1-2 entries``), empty when there are none."""
    words = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            words.append(f">= {_num(item.ge)}")
        elif isinstance(item, annotated_types.Gt):
            words.append(f"> {_num(item.gt)}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"<= {_num(item.le)}")
        elif isinstance(item, annotated_types.Lt):
            words.append(f"< {_num(item.lt)}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            words.append("not empty" if item.min_length == 1 else f"at least {item.min_length} long")
        elif isinstance(item, annotated_types.MaxLen):
            words.append(f"at most {item.max_length} long")
    return ", ".join(words)


def _num(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int) and value >= 2**32:
        return f"2^{value.bit_length()} - 1" if (value + 1) & value == 0 else str(value)
    return str(value)


def _json(value) -> str:
    return "`" + json.dumps(value) + "`"


def _prose(text: str) -> str:
    """A docstring or help text as one Markdown table cell: one line, reST roles and ``literals`` as `code`."""
    text = re.sub(r":(?:mod|meth|func|class|data|attr):`~?([^`]+)`", r"`\1`", text or "")
    text = text.replace("``", "`")
    return " ".join(text.split()).replace("|", "\\|")


def _flags(section: str, name: str, info: dict) -> str:
    """``command: --flag`` for every command that takes the field, with the command's own default if it has one."""
    cells = []
    for command, override in info["commands"].items():
        override = override or {}
        cell = f"{command}: `{flag_of(section, name, command)}`"
        if "default" in override:
            cell += f" (default {_json(override['default'])})"
        cells.append(cell)
    return "; ".join(cells) or "recipe file only"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


HEADER = [_row("field", "type", "default", "CLI flag per command", "stage", "help"), _row(*["---"] * 6)]


def markdown_reference() -> str:
    """docs/recipe.md: the recipe's own fields, then one table per section, in declaration order."""
    grants = ", ".join(f"`{section}.{name}`" for section, name in GRANTS)
    lines = [
        "# Recipe reference", "",
        f"Generated from `src/depthprune/recipe/schema.py` by `{WRITE_COMMAND}`; do not edit by hand "
        "(the tests fail when it is stale). The JSON schema of the same declarations is "
        "[recipe.schema.json](recipe.schema.json).", "",
        "Every run of every command is one recipe. `depthprune CMD --recipe FILE` replays a recipe file or a "
        "previous run's `depthprune.json`, and flags given with it override its values. Values are checked "
        "strictly: `\"two\"` is not an integer, `\"yes\"` not a boolean, NaN and infinity are refused, and so is "
        "an unknown field; each problem is one sentence naming the field (or, on the command line, the flag).", "",
        f"A recipe file never grants {grants}: only the command line or Python can.", "",
        "Columns: *CLI flag per command* lists every command that accepts the field, with its flag there and, "
        "where that command's default differs from the recipe default, its own default. *stage* is the pipeline "
        "stage that consumes the field (a run that sets a field no stage of its plan consumes is refused).", "",
        "Commands: " + ", ".join(f"`{c}`" for c in COMMANDS) + ".", "",
        "## The recipe", "",
        _prose(Recipe.__doc__ or ""), "", *HEADER,
    ]
    for name, f in Recipe.model_fields.items():
        if name in SECTIONS:
            continue
        how, stage = TOP_FIELDS[name]  # a new top-level field must say how it is set (KeyError here otherwise)
        default = "required" if f.is_required() else _json(f.get_default(call_default_factory=True))
        kind = _type(f.annotation)
        if _bounds(f.metadata):
            kind += f" ({_bounds(f.metadata)})"
        lines.append(_row(f"`{name}`", kind, default, how, stage, _prose(f.description or TOP_HELP.get(name, ""))))
    lines.append("")
    for section, cls in SECTIONS.items():
        lines += [f"## `{section}`", "", _prose(cls.__doc__ or ""), "", *HEADER]
        for name, f in cls.model_fields.items():
            info = field_info(cls, name)
            kind = _type(info["annotation"])
            if _bounds(f.metadata):
                kind += f" ({_bounds(f.metadata)})"
            lines.append(_row(f"`{name}`", kind, _json(info["default"]), _flags(section, name, info), info["stage"],
                              _prose(info["help"])))
        lines.append("")
    return "\n".join(lines)


def json_schema_text() -> str:
    """docs/recipe.schema.json: pydantic's JSON schema of :class:`Recipe` (stable key order, one final newline)."""
    return json.dumps(Recipe.json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated(docs: Path = DOCS) -> dict[Path, str]:
    """Each generated file and the text it must hold."""
    return {docs / "recipe.md": markdown_reference(), docs / "recipe.schema.json": json_schema_text()}


def stale(docs: Path = DOCS) -> list[Path]:
    """The generated files that are missing or differ from what the schema generates now."""
    return [path for path, text in generated(docs).items()
            if not path.is_file() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depthprune.recipe.docs",
                                     description="Generate docs/recipe.md and docs/recipe.schema.json from the "
                                                 "recipe schema.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate both files")
    mode.add_argument("--check", action="store_true", help="exit 1 when either file is stale")
    parser.add_argument("--docs", type=Path, default=DOCS, help=f"the docs folder (default: {DOCS})")
    args = parser.parse_args(argv)
    if not args.docs.is_dir():
        parser.error(f"no docs folder at {args.docs}: run from a source checkout or give --docs DIR")
    if args.write:
        for path, text in generated(args.docs).items():
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        return 0
    out_of_date = stale(args.docs)
    for path in out_of_date:
        print(f"{path} is stale: run {WRITE_COMMAND}", file=sys.stderr)
    return 1 if out_of_date else 0


if __name__ == "__main__":
    sys.exit(main())
