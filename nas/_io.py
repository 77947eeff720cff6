"""Small helpers shared by every module that writes results: atomic replacement, a full disk
named in one line, timestamps, the user's cache folder.

Kept free of torch and pandas so that light modules (latency tables) can use it.
"""

from __future__ import annotations

import datetime
import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from nas.errors import NASError

# errno values that mean "the file system is full" (EDQUOT: over the user's quota).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class OutOfSpaceError(NASError, OSError):
    """The disk filled while writing a file (the message names the file and what it held)."""

    def __init__(self, path: str | Path, what: str) -> None:
        message = (f"no space left on the device of {path} while writing {what}; free some space "
                   "and run the command again (what was written before is kept)")
        super().__init__(errno.ENOSPC, message)
        self.path = Path(path)
        self.what = what

    def __str__(self) -> str:
        return str(self.strerror)


def is_out_of_space(err: BaseException, path: str | Path | None = None) -> bool:
    """Whether ``err`` means the disk is full. ``torch.save`` reports a full disk as a
    ``RuntimeError`` from its C++ writer (no errno): for that, the file system of ``path``
    having (almost) no space left decides."""
    if isinstance(err, OSError):
        return err.errno in NO_SPACE_ERRNOS
    if isinstance(err, RuntimeError) and path is not None:
        try:
            stat = os.statvfs(Path(path).parent)
        except OSError:
            return False
        return stat.f_bavail * stat.f_frsize < (1 << 20)
    return False


@contextmanager
def writing(path: str | Path, what: str, *, partial: Path | None = None) -> Iterator[None]:
    """Turn a full disk inside the block into :class:`OutOfSpaceError` naming ``path`` and
    ``what``; ``partial`` (a temporary file the block writes) is removed on any failure."""
    try:
        yield
    except BaseException as err:
        if partial is not None:
            partial.unlink(missing_ok=True)
        if is_out_of_space(err, path) and not isinstance(err, OutOfSpaceError):
            raise OutOfSpaceError(path, what) from None
        raise


def temporary_sibling(path: Path) -> Path:
    """A per-process temporary name beside ``path`` (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + f".tmp{os.getpid()}")


def write_atomic(path: str | Path, write: Callable[[Path], object], *, what: str) -> None:
    """Call ``write(tmp)`` on a temporary sibling, then rename it over ``path``: a kill never
    leaves half a file, a reader sees the old or the new content, and a full disk leaves no
    temporary file and ends in one :class:`OutOfSpaceError` naming ``path`` and ``what``."""
    path = Path(path)
    with writing(path, what):
        tmp = temporary_sibling(path)
    with writing(path, what, partial=tmp):
        write(tmp)
        os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str, *, what: str | None = None) -> None:
    """:func:`write_atomic` of ``text`` (UTF-8)."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"),
                 what=what or f"{Path(path).name}")


def append_line(path: str | Path, line: str, *, what: str) -> None:
    """Append one line (a result record) to ``path``: a full disk mid-write cuts the partial
    line off again, so the file never holds half a record and the next append never lands on
    one. One process appends to a given file at a time (callers that share a file lock it)."""
    path = Path(path)
    with writing(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        append_bytes(path, line.rstrip("\n").encode("utf-8") + b"\n")


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` with ``os.write`` (no buffer to flush again on failure) and fsync; on
    any failure the file is cut back to its size before, then the error is raised."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def plain_data(value: Any, *, digits: int = 5) -> Any:
    """``value`` in plain Python types that ``yaml.safe_dump`` writes: numpy and torch scalars
    unwrapped, tuples as lists, keys as strings, floats rounded to ``digits`` (summaries
    report measurements, not float noise)."""
    if isinstance(value, str):
        return str(value)  # also str subclasses such as torch's TorchVersion
    if isinstance(value, dict):
        return {str(k): plain_data(v, digits=digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v, digits=digits) for v in value]
    if hasattr(value, "item") and not isinstance(value, bytes):
        value = value.item()
    if isinstance(value, float):
        return round(value, digits)
    return value


def now_iso() -> str:
    """This moment as local ISO 8601 with its UTC offset, to the second (for provenance)."""
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def default_cache_dir() -> Path:
    """``$NAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mnv3-nas``, else ``~/.cache/mnv3-nas``: the
    user's cache of decoded data sets and of latency tables measured on this host."""
    if os.environ.get("NAS_CACHE_DIR"):
        return Path(os.environ["NAS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnv3-nas"


__all__ = ["OutOfSpaceError", "append_bytes", "append_line", "default_cache_dir", "is_out_of_space", "now_iso",
           "temporary_sibling", "write_atomic", "write_text_atomic", "writing"]
