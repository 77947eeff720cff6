"""A Ctrl-C that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT
arrives. If that is inside a weakref callback or a finalizer (torch and the garbage collector
run many), the interpreter prints "Exception ignored in ..." and the interrupt is gone: a
search went on for minutes after Ctrl-C. So the handler also records the interrupt, and the
long loops (the training step, the trial boundaries) call :func:`raise_if_interrupted`.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

_interrupted = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


class _DropInterruptTracebacks(logging.Filter):
    """Optuna logs every trial that raised, with its traceback, KeyboardInterrupt included:
    a Ctrl-C printed some 150 lines of it before the run's own one-line exit. A full disk
    stops the run too and is reported in one line by the command."""

    def filter(self, record: logging.LogRecord) -> bool:
        from nas._io import OutOfSpaceError

        exc = record.exc_info
        return not (exc and exc[0] is not None
                    and issubclass(exc[0], (KeyboardInterrupt, OutOfSpaceError)))


def _quiet_unraisable(unraisable: Any) -> None:
    """An interrupt raised inside a finalizer is recorded (``_interrupted``) and raised again
    at the next check: Python's "Exception ignored in ..." traceback for it is noise."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _interrupted.is_set():
        return
    sys.__unraisablehook__(unraisable)


def install_sigint_handler() -> None:
    """Record Ctrl-C as well as raising it; a SIGINT the caller ignores stays ignored.

    Also keeps Optuna from printing a traceback for the trial a Ctrl-C stopped (the trial is
    marked failed with the reason "interrupted (Ctrl-C)" and retried on resume)."""
    optimize_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _DropInterruptTracebacks) for f in optimize_log.filters):
        optimize_log.addFilter(_DropInterruptTracebacks())
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    _interrupted.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _quiet_unraisable


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived and its exception was swallowed."""
    if _interrupted.is_set():
        raise KeyboardInterrupt
