"""Where a study lives: the journal file in the run folder (appended whole or not at all,
checked for damage, repairable) or an RDB URL with Optuna's heartbeat and retry callback.

A journal record is one JSON line. Optuna's file backend writes a batch of records with one
``write``; on a full disk that leaves part of a line, the next append (a retry, another
worker) lands on it, and every later read fails with a bare JSON error. The backend here cuts
a failed append back off under the journal's lock, so a record is written whole or not at
all, and names the file, line and repair command when it finds damage made some other way.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial

from nas._io import OutOfSpaceError, append_bytes, now_iso, write_atomic, writing
from nas.errors import NASError
from nas.search.credentials import redact

JOURNAL_NAME = "study.journal"
REPAIRS_SUFFIX = ".repairs.jsonl"  # beside the journal: what each repair dropped


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


class StorageUnreachableError(NASError, RuntimeError):
    """The study database cannot be reached or refuses the connection (no password shown)."""


# ---------------------------------------------------------------------------- damage
def _records(data: bytes) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """Every complete record of a journal and the damaged lines ``(line number, bytes)``.

    A damaged line that ends with a whole record (a torn record with the next append written
    onto it) gives that record back: the torn part was never acknowledged to its writer,
    the appended one was.
    """
    lines = data.split(b"\n")
    kept: list[bytes] = []
    damaged: list[tuple[int, bytes]] = []
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if last and not line:
            break
        if not last:
            try:
                if isinstance(json.loads(line), dict):
                    kept.append(line)
                    continue
            except ValueError:
                pass
            salvaged = _whole_record_at_end(line)
            if salvaged is not None:
                kept.append(salvaged)
                damaged.append((number, line[: len(line) - len(salvaged)]))
                continue
        damaged.append((number, line))
    return kept, damaged


def _whole_record_at_end(line: bytes) -> bytes | None:
    for start in (m.start() for m in re.finditer(rb'\{"op_code"', line)):
        if start == 0:
            continue
        try:
            if isinstance(json.loads(line[start:]), dict):
                return line[start:]
        except ValueError:
            continue
    return None


def _damage_message(path: Path, line: int | None, torn_end: bool) -> str:
    what = ("the last record is cut short (the run was killed or the disk filled while writing "
            "it)" if torn_end else "not a complete journal record")
    where = f"{path}:{line}" if line is not None else str(path)
    return (f"{where}: {what}; repair with `nas-study repair {path}` (keeps every complete "
            "record, the damaged file is kept beside it)")


def check_journal(path: Path) -> None:
    """Refuse a journal with a damaged record (a full disk, a kill mid-write, a garbled line).

    Optuna would append the next record onto a torn line and every later open would fail
    with a bare JSON error; this names the file and line and the command that repairs it.
    """
    if not path.is_file():
        return
    data = path.read_bytes()
    _, damaged = _records(data)
    if damaged:
        line = damaged[0][0]
        raise JournalError(_damage_message(path, line, torn_end=line == data.count(b"\n") + 1))


# ---------------------------------------------------------------------------- repair
@dataclass(frozen=True)
class RepairReport:
    kept: int
    dropped: int
    backup: Path | None


def repair_journal(path: Path) -> RepairReport:
    """Keep every complete record, drop the damaged ones; the original is kept as
    ``<name>.damaged-<time>`` beside it, and what was dropped (trial, operation) is noted in
    ``<name>.repairs.jsonl`` so a trial that must be re-run says why.

    The backup is written first: a repair that cannot write it changes nothing and says so.
    The repaired journal must replay in Optuna before it replaces the original.
    """
    data = path.read_bytes()
    kept, damaged = _records(data)
    if not damaged:
        return RepairReport(len(kept), 0, None)
    backup = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        write_atomic(backup, lambda tmp: tmp.write_bytes(data), what="the repair's backup of the journal")
    except OutOfSpaceError as err:
        raise JournalError(f"{path}: not repaired: {err} (the journal is unchanged)") from None
    repaired = b"".join(line + b"\n" for line in kept)
    _check_replays(path, repaired)
    note = {"time": now_iso(), "backup": backup.name,
            "dropped": [{"line": n, **_fragment_fields(fragment)} for n, fragment in damaged]}
    notes = path.with_name(path.name + REPAIRS_SUFFIX)
    with writing(notes, "the journal's repair notes"):
        append_bytes(notes, json.dumps(note).encode("utf-8") + b"\n")
    write_atomic(path, lambda tmp: tmp.write_bytes(repaired), what="the repaired journal")
    return RepairReport(len(kept), len(damaged), backup)


def _fragment_fields(fragment: bytes) -> dict[str, Any]:
    """What can be read off a damaged record: its trial and operation, when they survive."""
    fields: dict[str, Any] = {}
    for key in ("trial_id", "op_code"):
        match = re.search(rb'"%s":\s*(\d+)' % key.encode(), fragment)
        if match:
            fields[key] = int(match.group(1))
    return fields


def _check_replays(path: Path, repaired: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        copy.write_bytes(repaired)
        try:
            storage = JournalStorage(JournalFileBackend(str(copy), lock_obj=JournalFileOpenLock(str(copy))))
            for study in storage.get_all_studies():
                storage.get_all_trials(study._study_id, deepcopy=False)
        except Exception as err:  # any replay failure: refuse rather than write a bad journal
            raise JournalError(f"{path}: not repaired: the complete records do not replay in Optuna "
                               f"({type(err).__name__}: {err}); the journal is unchanged") from None


def repaired_trials(path: Path) -> dict[int, str]:
    """Trial numbers whose record a repair of ``path`` dropped, with a sentence saying so.

    A run folder's journal holds one study, so a record's trial id is the trial's number.
    """
    notes = path.with_name(path.name + REPAIRS_SUFFIX)
    if not notes.is_file():
        return {}
    lost: dict[int, str] = {}
    for line in notes.read_text(encoding="utf-8").splitlines():
        try:
            note = json.loads(line)
        except ValueError:
            continue  # a note cut by a kill: the repair it describes did not finish
        for record in note.get("dropped", []):
            if "trial_id" in record:
                lost[int(record["trial_id"])] = (
                    f"its journal record was lost (damaged, dropped by `nas-study repair` at "
                    f"{note['time']}); run again")
    return lost


# ---------------------------------------------------------------------------- the backend
class SafeJournalBackend(JournalFileBackend):
    """Optuna's journal file, with appends that are whole or absent and damage named."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._append_lock = JournalFileOpenLock(str(path))
        with writing(path, "the study journal"):
            super().__init__(str(path), lock_obj=self._append_lock)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError:  # Optuna's "Invalid log format." or a JSONDecodeError
            check_journal(self._path)  # names the file, line and repair command
            raise JournalError(_damage_message(self._path, None, torn_end=False)) from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        self._append_lock.acquire()
        try:
            with writing(self._path, "the study journal (the record was not written; the "
                                     "journal is whole)"):
                append_bytes(self._path, data)
        finally:
            self._append_lock.release()


# ---------------------------------------------------------------------------- RDB
class HeartbeatRetry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker stopped its heartbeat, with the reason recorded
    (Optuna fails the trial without one)."""

    def __init__(self, *, max_retry: int, grace_period: int) -> None:
        with warnings.catch_warnings():  # experimental since Optuna 2.8, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)
        self.grace_period = grace_period

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        worker = trial.user_attrs.get("worker", "its worker")
        study.set_user_attr(f"fail_reason:{trial.number}",
                            f"worker {worker} stopped its heartbeat for over {self.grace_period} s "
                            "(killed, or lost its connection)")
        super().__call__(study, trial)


def describe_database(url: str) -> str:
    """``host:port/database`` of a database URL, for messages (never the password)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not parseable: say so without quoting it
        return redact(url)
    host = parsed.host or parsed.query.get("host") or "localhost"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.get_backend_name()} database {parsed.database!r} at {host}{port}" + (
        f" as user {parsed.username!r}" if parsed.username else "")


def _rdb_storage(settings: StorageSettings) -> RDBStorage:
    assert settings.url is not None
    return RDBStorage(
        settings.url,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        heartbeat_stale_trial_callback=HeartbeatRetry(max_retry=settings.max_retry,
                                                      grace_period=settings.grace_period),
    )


def open_rdb(settings: StorageSettings) -> RDBStorage:
    """The RDB storage, or one line naming host, port and database when it cannot be used."""
    import sqlalchemy.exc

    assert settings.url is not None
    try:
        with warnings.catch_warnings():  # heartbeats are experimental in Optuna since 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _rdb_storage(settings)
    except sqlalchemy.exc.ArgumentError:
        raise StorageUnreachableError(f"storage: {redact(settings.url)} is not a database URL "
                                      "(dialect://user@host:port/database)") from None
    except sqlalchemy.exc.NoSuchModuleError as err:
        raise StorageUnreachableError(f"storage: no SQLAlchemy dialect for {redact(settings.url)} "
                                      f"({err})") from None
    except ModuleNotFoundError as err:
        raise StorageUnreachableError(f"storage: the database driver {err.name!r} is not installed "
                                      f"(needed for {describe_database(settings.url)})") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        first = redact(reason[0]) if reason else type(err).__name__
        raise StorageUnreachableError(
            f"storage: cannot use the {describe_database(settings.url)}: {first} (give the password "
            "with ~/.pgpass or PGPASSWORD, not in the URL)") from None


def open_storage(settings: StorageSettings) -> BaseStorage:
    """Open (creating if needed) the study storage; a damaged journal is refused."""
    if settings.url is None:
        path = settings.journal_path
        with writing(path, "the run folder"):
            path.parent.mkdir(parents=True, exist_ok=True)
        check_journal(path)
        # The open-lock works on any file system (the symlink lock does not on some mounts).
        return JournalStorage(SafeJournalBackend(path))
    return open_rdb(settings)
