"""`depthprune eval --tasks` and `prune --eval-tasks` through lm-eval, on a tiny random model (offline data)."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import TASK_DATA
from test_cli import assert_user_error, run
from tiny import tiny_checkpoint

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("evalcli") / "tiny", num_layers=4)


def test_eval_tasks_writes_json_with_versions(model, tmp_path):
    result = run("eval", model, "--tasks", "piqa,boolq", "--limit", 4, "--data-dir", TASK_DATA,
                 "--results", tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "dense-piqa_boolq.json").read_text())
    assert out["role"] == "dense" and out["lm_eval_version"] and out["limit"] == 4
    for task in ("piqa", "boolq"):
        entry = out["tasks"][task]
        assert entry["n_samples"]["effective"] == 4
        assert 0.0 <= entry["metrics"]["acc"] <= 1.0
        assert entry["version"] is not None
    assert out["command"].startswith("depthprune ")


def test_prune_eval_tasks_side_by_side_and_report(model, tmp_path):
    out = tmp_path / "pruned"
    result = run("prune", model, "--remove", 1, "--samples", 2, "--seq-len", 32, "--eval-tasks", "piqa",
                 "--eval-limit", 3, "--eval-data-dir", TASK_DATA, "--out", out)
    assert result.returncode == 0, result.stderr
    dense = json.loads((out / "eval" / "dense.json").read_text())
    pruned = json.loads((out / "eval" / "pruned.json").read_text())
    assert dense["role"] == "dense" and pruned["role"] == "pruned"
    assert "piqa" in (out / "README.md").read_text()
    result = run("report", out, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "piqa" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("args, fragment", [
    (["--tasks", "nosuchtask", "--data-dir", TASK_DATA], "unknown task 'nosuchtask'"),
    (["--tasks", "piqa", "--data-dir", "/no/such/dir"], "does not exist"),
    ([], "give --ppl SPEC and/or --tasks"),
])
def test_eval_bad_input(model, args, fragment):
    assert_user_error(run("eval", model, *args), fragment)


@pytest.mark.parametrize("task, relative, content, fragment", [
    ("piqa", "piqa/valid.jsonl", "not json\n", "valid.jsonl line 1 is not JSON"),
    ("lambada_openai", "lambada/lambada_openai.jsonl", '{"no_text_field": 1}\n', "KeyError"),
    ("winogrande", "winogrande/winogrande.jsonl", "\xff\xfe garbage", "winogrande.jsonl line 1 is not JSON"),
    ("arc_easy", "arc/llm-adapters/ARC-Easy/test.json", "[", "the arc data"),
])
def test_eval_malformed_task_data_is_one_sentence(model, tmp_path, task, relative, content, fragment):
    """A task file that exists but does not parse: one sentence naming the task's data, exit 2, and none of
    lm-eval's warnings around it."""
    data = tmp_path / "data"
    shutil.copytree(TASK_DATA, data)
    target = data / relative
    assert target.is_file(), f"fixture layout changed: {relative}"
    target.write_text(content, encoding="utf-8")
    result = run("eval", model, "--tasks", task, "--data-dir", data, "--limit", "2")
    assert_user_error(result, "cannot be read", fragment, str(Path(data)))
    assert "WARNING" not in result.stderr
