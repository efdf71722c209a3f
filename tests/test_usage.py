"""The CLI's answer to every usage mistake a newcomer makes: the usage line, one sentence, exit 2, no traceback.

Driven as a subprocess, the way a user runs it. None of these commands loads a model (usage is checked
before any command body runs), so each takes about a second of CPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from depthprune.cli import base as cli  # the typer app and the process boundary
from depthprune import __version__

SRC = Path(__file__).resolve().parents[1] / "src"


def run(*args):
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "depthprune", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def assert_usage_error(result, usage: str, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"Usage: {usage}"), result.stderr
    assert lines[1].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[1], result.stderr


@pytest.mark.parametrize("args, usage, fragments", [
    (["prune", "m", "--out", "o", "--bogus"], "depthprune prune", ["No such option: --bogus"]),
    (["prune"], "depthprune prune", ["Missing argument 'MODEL'"]),
    (["prune", "m", "--out", "o", "--ratio", "abc"], "depthprune prune", ["'--ratio'"]),
    (["frobnicate"], "depthprune [OPTIONS] COMMAND", ["No such command 'frobnicate'"]),
    (["prnue", "m"], "depthprune [OPTIONS] COMMAND", ["No such command 'prnue'", "prune"]),
    (["score", "m", "--out"], "depthprune score", ["--out"]),
    (["prune", "m"], "depthprune prune", ["Missing option '--out'"]),
    (["repair", "m"], "depthprune repair", ["Missing option '--out'"]),
], ids=["unknown-option", "missing-argument", "ratio-abc", "unknown-command", "typo-command", "option-no-value",
        "missing-out", "missing-out-repair"])
def test_usage_mistakes(args, usage, fragments):
    assert_usage_error(run(*args), usage, *fragments)


def test_bare_command_prints_help_and_exits_0():
    result = run()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Usage: depthprune" in result.stdout and "prune" in result.stdout and "score" in result.stdout


def test_version():
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"depthprune {__version__}"


@pytest.mark.parametrize("flag", ["-q", "--quiet", "--debug"])
def test_global_flags_after_the_subcommand(flag):
    # accepted after the subcommand: the only complaint left is the missing model, not the flag
    assert_usage_error(run("score", flag), "depthprune score", "Missing argument 'MODEL'")
    assert_usage_error(run("score", "--out", "x.json", flag), "depthprune score", "Missing argument 'MODEL'")


def test_help_shows_no_type_for_flags_and_no_truncation():
    result = run("prune", "--help")
    assert result.returncode == 0
    assert "<bool>" not in result.stdout
    assert "--overwrite" in result.stdout and "--bench" in result.stdout
    for command in ("score", "prune", "sweep", "eval", "bench", "report"):
        assert "…" not in run(command, "--help").stdout, command


def test_hoist_global_flags_keeps_everything_after_double_dash():
    assert cli.hoist_global_flags(["prune", "m", "-q", "--debug", "--", "-q"]) == ["-q", "--debug", "prune", "m",
                                                                                  "--", "-q"]


def _fake_app(exc):
    def app(**kwargs):
        raise exc
    return app


@pytest.mark.parametrize("exc", [click.exceptions.Abort(), typer.Abort()], ids=["click", "typer"])
def test_abort_in_a_prompt_exits_130(monkeypatch, exc):
    monkeypatch.setattr(cli, "app", _fake_app(exc))
    assert cli._run_app(["prune"]) == 130


def test_ctrl_c_inside_a_command_exits_130(monkeypatch):
    # typer turns KeyboardInterrupt into Exit(130), which non-standalone mode *returns*: it must not become exit 0
    app = typer.Typer()

    @app.command()
    def ask() -> None:
        raise KeyboardInterrupt

    @app.command()
    def other() -> None:
        pass

    monkeypatch.setattr(cli, "app", app)
    assert cli._run_app(["ask"]) == 130


def test_click_usage_error_from_plain_click_is_caught(monkeypatch, capsys):
    monkeypatch.setattr(cli, "app", _fake_app(click.UsageError("bad thing happened")))
    assert cli._run_app(["prune"]) == 2
    assert "error: bad thing happened" in capsys.readouterr().err


def test_tables_are_not_squeezed_into_80_columns_when_output_is_a_pipe(tmp_path):
    """A table wider than 80 columns keeps each row on one line when stdout is a pipe (here: captured)."""
    import subprocess
    import sys

    from test_hostile import subprocess_env

    code = ("from rich.table import Table\n"
            "from depthprune.cli.base import console\n"
            "t = Table()\n"
            "for c in ('task', 'metric', 'dense', 'pruned', 'n', 'source'): t.add_column(c)\n"
            "t.add_row('hellaswag_local_with_a_long_name', 'acc_norm', '0.4123 ± 0.0123', '0.3987 ± 0.0124', '500',\n"
            "          '/data/tasks/hellaswag/validation.jsonl')\n"
            "console.print(t)\n")
    env = {k: v for k, v in subprocess_env().items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    row = [line for line in out.splitlines() if "hellaswag" in line]
    assert len(row) == 1 and "0.3987 ± 0.0124" in row[0] and "validation.jsonl" in row[0], out


def test_help_lists_the_allowed_values_and_long_defaults_from_the_declaration():
    """Every choice a field accepts (its Literal type) and a default too long for typer's column appear in --help;
    bracketed text is escaped so rich does not swallow it as markup."""
    import subprocess
    import sys

    from test_hostile import subprocess_env

    out = subprocess.run([sys.executable, "-m", "depthprune", "sweep", "--help"], capture_output=True, text=True,
                         env={**subprocess_env(), "COLUMNS": "400"}, check=True).stdout
    metrics = next(line for line in out.splitlines() if "--metrics" in line)
    for name in ("bi", "angular-all", "relative-magnitude", "reverse-order", "random", "ppl", "taylor"):
        assert name in metrics, metrics
    assert "Default: bi, angular, relative-magnitude" in metrics, metrics
    strategies = next(line for line in out.splitlines() if "--strategies" in line)
    assert "laco" in strategies and "greedy-ppl" in strategies, strategies
