"""Where a study lives: the journal file in the run folder (checked for a torn last record
and repairable) or an RDB URL with Optuna's heartbeat and retry callback."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from nas._io import write_text_atomic
from nas.errors import NASError


JOURNAL_NAME = "study.journal"


@dataclass(frozen=True)
class StorageSettings:
    """Where the study lives. ``url`` None means the journal file in ``run_dir``."""

    run_dir: str
    url: str | None = None
    heartbeat_interval: int = 30
    grace_period: int = 90
    max_retry: int = 1

    @property
    def journal_path(self) -> Path:
        return Path(self.run_dir) / JOURNAL_NAME


class JournalError(NASError, RuntimeError):
    """The journal file is damaged (the message names the file, the line and the repair)."""


def _complete_records(data: bytes) -> tuple[list[bytes], str | None]:
    """The journal's records before the first damaged one, and the damage (None, "torn" or
    "garbled"). A record is one JSON line ending in a newline."""
    lines = data.split(b"\n")
    kept: list[bytes] = []
    for line in lines[:-1]:
        try:
            json.loads(line)
        except ValueError:
            return kept, "garbled"
        kept.append(line)
    return kept, "torn" if lines[-1] else None


def check_journal(path: Path) -> None:
    """Refuse a journal whose last record is torn (a full disk, a kill mid-write) or garbled.

    Optuna would append the next record onto the torn line and every later open would fail
    with a bare JSON error; this names the file and line and the command that repairs it.
    """
    if not path.is_file():
        return
    kept, damage = _complete_records(path.read_bytes())
    if damage is None:
        return
    what = ("the last record is cut short (the run was killed or the disk filled while writing "
            "it)" if damage == "torn" else "not a complete journal record")
    raise JournalError(f"{path}:{len(kept) + 1}: {what}; repair with `nas-study repair {path}` "
                       f"(keeps the {len(kept)} complete records before it, the damaged file is "
                       "kept beside it)")


def repair_journal(path: Path) -> tuple[int, int, Path | None]:
    """Keep the complete records before the first damaged one; ``(kept, dropped, backup)``.

    The original file is kept as ``<name>.damaged-<time>`` beside the repaired one.
    """
    data = path.read_bytes()
    kept, damage = _complete_records(data)
    if damage is None:
        return len(kept), 0, None
    dropped = len([line for line in data.split(b"\n") if line]) - len(kept)
    backup = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    backup.write_bytes(data)
    write_text_atomic(path, "".join(line.decode("utf-8") + "\n" for line in kept))
    return len(kept), dropped, backup


def open_storage(settings: StorageSettings) -> BaseStorage:
    """Open (creating if needed) the study storage; a damaged journal is refused."""
    if settings.url is None:
        path = settings.journal_path
        path.parent.mkdir(parents=True, exist_ok=True)
        check_journal(path)
        # The open-lock works on any file system (the symlink lock does not on some mounts).
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return JournalStorage(backend)
    return RDBStorage(
        settings.url,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        failed_trial_callback=RetryFailedTrialCallback(max_retry=settings.max_retry),
    )
