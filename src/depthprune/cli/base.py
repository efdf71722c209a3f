"""The typer app, its global options and the process boundary: errors, interrupts and exit codes.

User errors are one sentence on stderr and exit 2; Ctrl-C exits 130 and SIGTERM 143, leaving no partial output
(the writer's transactions clean up); anything else is an internal error (exit 1, traceback with --debug).
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.perf_counter()  # imports and loading are the user's time too: a --budget includes them

import functools
import logging
import os
import shlex
import signal
import sys
import traceback

import tqdm.std as tqdm_std
import typer
from rich.console import Console
from transformers.utils import logging as hf_logging
from rich.text import Text

from depthprune._version import __version__
from depthprune.errors import NOTE, DepthpruneError
from depthprune.io.guards.signals import RECEIVED, Terminated, install_sigterm_handler
from depthprune.io.writer import forget_all

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make LLMs shallower: score decoder layers, remove the least important, evaluate. "
                       "-q and --debug may go before or after the command.")


def _flags_without_type_label() -> None:
    """typer >= 0.20 labels value-less flags ``<bool>`` in help, as if they took a value: show no type for flags."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - older typer renders flags without a type already
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_depthprune", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else original(self, ctx)

    display_type_rich._depthprune = True
    TyperOption.display_type_rich = display_type_rich


_flags_without_type_label()
# markup=False, emoji=False: no user-supplied string (paths, specs, model names) is ever read as rich markup.
# soft_wrap=True: long lines (paths) are never broken by inserted newlines.
# A pipe or a file has no width: rich would lay tables out in 80 columns and wrap their cells; give them room unless
# COLUMNS says otherwise.
PIPE_WIDTH = 200


def _console(stderr: bool) -> Console:
    made = Console(stderr=stderr, markup=False, emoji=False, soft_wrap=True)
    if not made.is_terminal and "COLUMNS" not in os.environ:
        made.width = PIPE_WIDTH
    return made


console = _console(stderr=False)
err_console = _console(stderr=True)
STATE: dict = {"debug": False, "argv": None}


def command_line() -> str:
    """The command that is running, as a shell-quoted line (program name normalised to ``depthprune``)."""
    argv = STATE["argv"] if STATE["argv"] is not None else sys.argv[1:]
    return shlex.join(["depthprune", *argv])



def _version_callback(value: bool) -> None:
    if value:
        console.print(f"depthprune {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
          version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    STATE["debug"] = debug
    STATE["progress"] = not quiet
    if quiet:
        _silence_progress_bars()
    logging.addLevelName(NOTE, "note")
    logging.basicConfig(level=logging.DEBUG if debug else NOTE, format="%(levelname)s %(name)s: %(message)s")


def _silence_progress_bars() -> None:
    """Every bar off: ours, transformers' (loading, GGUF dequantization), the Hub's, datasets' and lm-eval's.

    tqdm reads ``TQDM_DISABLE`` only when it is first imported, which has happened by the time a command runs
    (importing this package imports torch, which imports tqdm), so the variable alone is not enough: the
    default of ``disable`` on tqdm's base class is switched as well, which every ``tqdm.auto``/``tqdm.std``
    subclass inherits. The variables still reach subprocesses.
    """
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if not getattr(tqdm_std.tqdm.__init__, "_depthprune_quiet", False):
        quiet_init = functools.partialmethod(tqdm_std.tqdm.__init__, disable=True)
        quiet_init._depthprune_quiet = True  # type: ignore[attr-defined]
        tqdm_std.tqdm.__init__ = quiet_init  # type: ignore[method-assign]
    hf_logging.disable_progress_bar()


def progress_enabled() -> bool:
    return STATE.get("progress", True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    STATE["argv"] = list(argv) if argv is not None else sys.argv[1:]
    # A wall-time budget counts from the start of the process when this is the process's own command line (the
    # console script), from this call when a caller passes argv (tests, embedding programs).
    STATE["started"] = PROCESS_STARTED if argv is None else time.perf_counter()
    debug = "--debug" in STATE["argv"]
    if {"-q", "--quiet"} & set(STATE["argv"]):
        # tqdm reads TQDM_DISABLE when it is imported (torch, transformers and the GGUF dequantizer import it
        # later, with the API): set here, every bar is off, not only ours
        os.environ["TQDM_DISABLE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _prepare_run()
    try:
        code = _run_app(STATE["argv"])
        if code == 130:  # typer turns Ctrl-C (and our SIGTERM exception) into a returned 130
            _interrupted(None, debug)
    except DepthpruneError as exc:
        _refuse(str(exc), debug)
    except KeyboardInterrupt as exc:
        _interrupted(exc, debug)
    except (OSError, UnicodeError, ValueError, RuntimeError) as exc:
        sentence = _file_error_sentence(exc)
        if sentence is None:
            _internal_error(exc, debug)
        _refuse(sentence, debug)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: one line, traceback with --debug
        _internal_error(exc, debug)
    sys.exit(code)


# ---- usage errors, --version, -q/--debug placement -------------------------------------------------------------
# typer >= 0.20 vendors its own copy of click (``typer._click``) and raises *those* exception classes, which are
# not subclasses of click's; older typer raises click's. Both families are matched here. In non-standalone mode
# click/typer return the code of an ``Exit`` (``--help`` -> 0, Ctrl-C in typer -> ``Exit(130)``) instead of
# exiting, so the return value of ``app`` is the exit code.

GLOBAL_FLAGS = ("-q", "--quiet", "--debug")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Accept the global flags anywhere: ``depthprune prune ... -q`` is run as ``depthprune -q prune ...``."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]


def _exception_families() -> tuple[tuple, tuple, tuple, tuple]:
    """(NoArgsIsHelp, ClickException, Abort, Exit) classes of click and of typer's vendored click, where present."""
    import click

    no_args, errors, aborts, exits = [], [click.exceptions.ClickException], [click.exceptions.Abort], [click.exceptions.Exit]
    if hasattr(click.exceptions, "NoArgsIsHelpError"):
        no_args.append(click.exceptions.NoArgsIsHelpError)
    try:
        from typer import _click as vendored
        from typer import exceptions as typer_exceptions
    except ImportError:  # typer < 0.20 raises click's own classes
        pass
    else:
        no_args.append(vendored.exceptions.NoArgsIsHelpError)
        errors.append(vendored.exceptions.ClickException)
        aborts.extend(getattr(typer_exceptions, n) for n in ("Abort",) if hasattr(typer_exceptions, n))
        exits.extend(getattr(typer_exceptions, n) for n in ("Exit",) if hasattr(typer_exceptions, n))
    return tuple(no_args), tuple(errors), tuple(aborts), tuple(exits)


def _run_app(argv: list[str]) -> int:
    """Run the typer app; usage mistakes print the usage line and one sentence (exit 2), never a traceback.

    A bare ``depthprune`` prints the help on stdout and exits 0 (asking for help is not an error).
    """
    no_args, errors, aborts, exits = _exception_families()
    if not argv:
        argv = ["--help"]
    try:
        rv = app(args=hoist_global_flags(argv), standalone_mode=False, prog_name="depthprune")
    except no_args as exc:  # a group called without its subcommand: show the help, like a bare `depthprune`
        ctx = getattr(exc, "ctx", None)
        help_text = ctx.get_help() if ctx is not None else ""
        if help_text:
            console.print(help_text, markup=False, highlight=False)
        return 0
    except errors as exc:
        _print_usage_error(exc, argv)
        return 2
    except aborts:  # click turns Ctrl-C (and our SIGTERM exception) into Abort: main() prints the one line
        return 130
    except exits as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def _print_usage_error(exc: Exception, argv: list[str]) -> None:
    """``Usage: depthprune prune [OPTIONS] MODEL`` then ``error: <one sentence> (see 'depthprune prune --help')``."""
    message = " ".join(str(exc.format_message() if hasattr(exc, "format_message") else exc).split())
    usage, path = _usage_of(getattr(exc, "ctx", None), argv)
    if usage:
        err_console.print(usage, markup=False, highlight=False, soft_wrap=True)
    hint = f" (see '{path} --help')" if path else ""
    err_console.print(Text.assemble(("error:", "bold red"), f" {message}{hint}"), highlight=False, soft_wrap=True)


def _usage_of(ctx, argv: list[str]) -> tuple[str, str]:
    """The usage line and command path of the failing command; some errors (an option missing its value) carry
    no context, then the subcommand named in ``argv`` is looked up."""
    if ctx is None:
        try:
            group = typer.main.get_command(app)
            ctx = group.make_context("depthprune", ["--help"], resilient_parsing=True)
            name = next((a for a in argv if not a.startswith("-")), None)
            command = group.get_command(ctx, name) if name else None
            if command is not None:
                ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        except Exception:  # noqa: BLE001 - the usage line is a courtesy; the error sentence still prints
            return "", ""
    return " ".join(ctx.get_usage().split()), ctx.command_path


# ---- error handling helpers used by main() ----

def _prepare_run() -> None:
    forget_all()
    RECEIVED.clear()
    install_sigterm_handler()
    if "--debug" not in (STATE["argv"] or []):
        # optional libraries that transformers imports on its own (torchao: quantization) log import-time
        # noise about kernels this machine lacks; it is not the user's business unless --debug
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def _refuse(sentence: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    err_console.print(Text.assemble(("error:", "bold red"), f" {sentence}"), highlight=False, soft_wrap=True)
    sys.exit(2)


def _interrupted(exc: BaseException | None, debug: bool) -> None:
    if debug and exc is not None:
        traceback.print_exc()
    terminated = isinstance(exc, Terminated) or signal.SIGTERM in RECEIVED
    err_console.print(f"{'terminated' if terminated else 'interrupted'}; no partial output was left behind",
                      highlight=False, soft_wrap=True)
    sys.exit(143 if terminated else 130)


def _file_error_sentence(exc: BaseException) -> str | None:
    """One sentence for an OS/decoding error that names a file; None for anything that looks like a bug."""
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        what = exc.strerror or type(exc).__name__
        return f"cannot access {exc.filename}: {what}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"input/output error: {exc.strerror or exc}"
    return None


def _internal_error(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    err_console.print(f"internal error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
                      highlight=False, soft_wrap=True)
    sys.exit(1)




