"""The one declaration per recipe field: CLI options, recipe-file type checks, JSON schema and docs all come from it."""

from __future__ import annotations

import json

import pytest
from rich.markup import escape

from depthprune.cli.options import recipe_parameters
from depthprune.errors import DepthpruneError
from depthprune.recipe import docs
from depthprune.recipe.schema import COMMANDS, SECTIONS, Recipe, command_fields, field_info


def test_docs_and_json_schema_are_generated_and_up_to_date():
    for path, text in docs.generated().items():
        assert path.read_text(encoding="utf-8") == text, f"run python -m depthprune.recipe.docs --write ({path})"
    table = docs.markdown_reference()
    for section, cls in SECTIONS.items():
        for name in cls.model_fields:
            assert f"| `{name}` |" in table, (section, name)


@pytest.mark.parametrize("section,field,value", [
    ("calibration", "samples", "two"), ("runtime", "trust_remote_code", "yes"), ("selection", "ratio", float("nan")),
    ("selection", "layers", "1,2"), ("output", "overwrite", 1), ("selection", "strategy", "sideways")])
def test_a_recipe_file_with_a_wrong_type_is_one_sentence_naming_the_field(tmp_path, section, field, value):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"model": "m", section: {field: value}}, allow_nan=True))
    with pytest.raises(DepthpruneError) as exc:
        Recipe.from_file(path)
    message = str(exc.value)
    assert f"{section}.{field}" in message and "\n" not in message


def test_a_recipe_file_cannot_grant_trust_or_overwrite(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"model": "m", "runtime": {"trust_remote_code": True},
                                "output": {"overwrite": True, "path": "x"}}))
    recipe = Recipe.from_file(path)
    assert recipe.runtime.trust_remote_code is False and recipe.output.overwrite is False
    assert sorted(recipe.file_grants) == ["output.overwrite", "runtime.trust_remote_code"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_of_a_command_is_exactly_one_cli_option(command):
    params = recipe_parameters(command)
    names = [p.name for p in params]
    assert names == [f"{s}__{n}" for s, n in command_fields(command)]
    flags = [p.default.param_decls[0] for p in params]
    declared = [p.default for p in params]
    assert len(set(flags)) == len(flags), "two fields share a flag"
    for (section, name), option in zip(command_fields(command), declared):
        info = field_info(SECTIONS[section], name)
        declared = (info["commands"][command] or {}).get("help") or info["help"]
        # the declared text, then only what the declaration itself adds (allowed values, a long default)
        assert option.help.startswith(escape(declared).rstrip()), (option.help, declared)
        extra = option.help[len(escape(declared).rstrip()):]
        assert extra == "" or extra.startswith((" Choices: ", " Default: ")), extra
