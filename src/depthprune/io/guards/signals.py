"""SIGTERM behaves like Ctrl-C: ``finally``/``except BaseException`` clean-ups (temporary outputs) run."""

from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


RECEIVED: list[int] = []  # signals seen (typer turns the exception into a bare exit code 130)


def _raise_terminated(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    RECEIVED.append(signum)
    raise Terminated()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into :class:`Terminated` (only possible from the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
