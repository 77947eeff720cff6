"""A lasting alternate signal stack for threads that ran OpenVINO's CPU plugin.

Each CPU plugin engine (one per ``openvino.Core``, made at its first ``compile_model``)
installs an alternate signal stack of its own on the compiling thread and, when released, puts
back the one that was there before it.
Released out of creation order, that "one before" is a stack an earlier engine already freed.
Python installs every signal handler with ``SA_ONSTACK``, so the next Ctrl-C (or any
handled signal) is delivered onto freed memory and the process dies with SIGSEGV instead of
raising ``KeyboardInterrupt``: a table build stopped with Ctrl-C crashed, and so did a test
run that sent itself SIGINT after two OpenVINO cores had compiled.

Installing a stack that is never freed right after each compilation makes the stack every
engine saves, and later restores, this one.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Larger than any signal frame the kernel writes here (AMX state included, ~11 KiB).
STACK_BYTES = 256 * 1024


class _StackT(ctypes.Structure):
    # glibc's stack_t on Linux: void *ss_sp; int ss_flags; size_t ss_size.
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_stack: ctypes.Array[ctypes.c_char] | None = None


def _sigaltstack(new: _StackT | None, old: _StackT | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sigaltstack(new and ctypes.byref(new), old and ctypes.byref(old)) != 0:
        raise OSError(ctypes.get_errno(), f"sigaltstack: {os.strerror(ctypes.get_errno())}")


def current_signal_stack() -> tuple[int, int] | None:
    """The calling thread's alternate signal stack as (address, size); None if it has none or
    the platform is not Linux."""
    if not sys.platform.startswith("linux"):
        return None
    found = _StackT()
    _sigaltstack(None, found)
    return None if found.ss_flags & 2 else (int(found.ss_sp or 0), int(found.ss_size))  # 2: SS_DISABLE


def install_lasting_signal_stack() -> None:
    """Make a process-lifetime buffer the calling thread's alternate signal stack (Linux only;
    elsewhere the runtimes' engines were not seen to touch it)."""
    global _stack
    if not sys.platform.startswith("linux"):
        return
    if _stack is None:
        _stack = ctypes.create_string_buffer(STACK_BYTES)
    _sigaltstack(_StackT(ctypes.cast(_stack, ctypes.c_void_p), 0, STACK_BYTES), None)


__all__ = ["STACK_BYTES", "current_signal_stack", "install_lasting_signal_stack"]
