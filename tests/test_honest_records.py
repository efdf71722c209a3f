"""Honest numbers and records: every numeric flag of every command refuses what it cannot honour, commands that
share a field accept the same values, records name their inputs so another folder can use them, and -q means no
progress bar from any library."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from test_hostile import cli, refused, run_cli, subprocess_env
from tiny import tiny_checkpoint

from depthprune.recipe.schema import COMMANDS, SECTIONS, command_fields, field_info, flag_of


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("honest")
    model = Path(tiny_checkpoint(root / "tiny", num_layers=4))
    return root, model


def _numeric_fields(kind: type) -> list[tuple[str, str, str]]:
    """(command, section, field) for every field of ``kind`` (float or int, optional or not) a command takes."""
    rows = []
    for command in COMMANDS:
        for section, name in command_fields(command):
            annotation = str(field_info(SECTIONS[section], name)["annotation"])
            if annotation in (f"<class '{kind.__name__}'>", f"typing.Optional[{kind.__name__}]"):
                rows.append((command, section, name))
    return rows


def _argv(command: str, model: Path, tmp_path: Path) -> list:
    return [command, model, *(["--out", tmp_path / "out"] if command in ("prune", "score", "sweep", "heads",
                                                                          "repair", "report") else [])]


FLOATS = _numeric_fields(float)


def test_the_float_fields_are_found():
    assert {("prune", "repair", "lr"), ("repair", "repair", "lr"), ("prune", "selection", "ratio")} <= set(FLOATS)


@pytest.mark.parametrize("command,section,name", FLOATS, ids=[f"{c}-{n}" for c, _, n in FLOATS])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_flag_of_every_command_refuses_non_finite_values(work, capsys, tmp_path, command, section,
                                                                     name, value):
    _, model = work
    flag = flag_of(section, name, command)
    refused(cli(capsys, *_argv(command, model, tmp_path), flag, value), flag, "finite")
    assert not (tmp_path / "out").exists()


def _lower_bounds() -> list[tuple[str, str, int, tuple[str, ...]]]:
    """(section, field, first refused value, commands) for every bounded whole-number field two commands share."""
    rows = []
    for section, cls in SECTIONS.items():
        for name, field in cls.model_fields.items():
            info = field_info(cls, name)
            if str(info["annotation"]) not in ("<class 'int'>", "typing.Optional[int]"):
                continue
            commands = tuple(c for c in COMMANDS if (section, name) in command_fields(c))
            low = [m.ge for m in field.metadata if getattr(m, "ge", None) is not None] + \
                [m.gt + 1 for m in field.metadata if getattr(m, "gt", None) is not None]
            if len(commands) > 1 and low:
                rows.append((section, name, low[0] - 1, commands))
    return rows


BOUNDS = _lower_bounds()


def test_shared_bounded_fields_are_found():
    assert any(name == "activation_budget_mb" and {"score", "prune"} <= set(cmds) for _, name, _, cmds in BOUNDS)


@pytest.mark.parametrize("section,name,value,commands", BOUNDS, ids=[n for _, n, _, _ in BOUNDS])
def test_commands_sharing_a_field_refuse_the_same_values_in_the_same_words(work, capsys, tmp_path, section, name,
                                                                          value, commands):
    _, model = work
    sentences = set()
    for command in commands:
        flag = flag_of(section, name, command)
        line = refused(cli(capsys, *_argv(command, model, tmp_path), flag, value), flag, str(value))
        sentences.add(line.replace(flag, "FLAG"))
    assert len(sentences) == 1, sentences


def test_the_record_names_the_dense_model_absolutely_and_repair_runs_from_another_folder(work, tmp_path):
    root, model = work
    here = tmp_path / "here"
    here.mkdir()
    shutil.copytree(model, here / "tiny")
    result = run_cli("prune", "tiny", "--layers", "2", "--out", "pruned", cwd=here)
    assert result.returncode == 0, result.stderr
    record = json.loads((here / "pruned" / "depthprune.json").read_text())
    assert Path(record["model"]).is_absolute() and Path(record["model"]) == here / "tiny"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    repaired = run_cli("repair", "../here/pruned", "--method", "linear", "--samples", "2", "--seq-len", "16",
                       "--out", "../repaired", cwd=elsewhere)
    assert repaired.returncode == 0, repaired.stderr
    assert f"saved repaired checkpoint to {tmp_path / 'repaired'} " in repaired.stdout  # no "../" left in it
    again = json.loads((tmp_path / "repaired" / "depthprune.json").read_text())
    assert again["repair"]["linear"] and math.isfinite(again["perplexity"]["pruned"]["ppl"]
                                                        if again.get("perplexity") else 0.0)


def test_repair_without_a_method_is_refused_not_a_copy(work, capsys, tmp_path):
    root, model = work
    result = run_cli("prune", model, "--layers", "1", "--out", tmp_path / "pruned")
    assert result.returncode == 0, result.stderr
    refused(cli(capsys, "repair", tmp_path / "pruned", "--out", tmp_path / "copy"), "--method")
    assert not (tmp_path / "copy").exists()


def test_quiet_silences_the_gguf_dequantization_bar_and_every_other(tmp_path):
    from gguf_tiny import write_tiny_gguf

    source = write_tiny_gguf(tmp_path / "in.gguf")
    env = {k: v for k, v in subprocess_env().items()  # as a user's shell has it: in-process -q runs set these
           if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    result = run_cli("prune", source, "--layers", "1", "--out", tmp_path / "out", env=env)
    assert result.returncode == 0, result.stderr
    bars = [line for line in result.stderr.splitlines() if "it/s]" in line or "%|" in line]
    assert not bars, bars


def test_every_writing_command_times_its_save(work, tmp_path):
    _, model = work
    result = run_cli("prune", model, "--layers", "1", "--offload", "none", "--out", tmp_path / "pruned")
    assert result.returncode == 0, result.stderr
    heads = run_cli("heads", model, "--metrics", "oproj-norm", "--select-by", "oproj-norm", "--remove-per-layer", "1", "--samples", "2",
                    "--seq-len", "16", "--out", tmp_path / "heads")
    assert heads.returncode == 0, heads.stderr
    for record_file in ("pruned/depthprune.json", "heads/heads.json"):
        record = json.loads((tmp_path / record_file).read_text())
        assert record["timings"]["save"] > 0, (record_file, record["timings"])


@pytest.mark.parametrize("typo,alias", [("smollm2_135m", "smollm2-135m"), ("SmolLM2-135M", "smollm2-135m"),
                                        ("gemma3_270m", "gemma3-270m"), ("smolm2-135m", "smollm2-135m")])
def test_a_misspelt_demo_alias_is_answered_with_the_alias_not_tried_on_the_hub(capsys, tmp_path, typo, alias):
    refused(cli(capsys, "prune", typo, "--layers", "1", "--out", tmp_path / "out"), f"'{alias}'")
