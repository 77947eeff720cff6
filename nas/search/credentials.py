"""Passwords in a storage URL never reach disk or logs.

A study on PostgreSQL is named by a URL that may carry a password
(``postgresql://user:secret@host/db``). Hydra writes every command-line override into the run
folder (``.hydra/overrides.yaml``, ``hydra.yaml``, ``config.yaml``) and error messages quote
settings, so the command line is cleaned before Hydra sees it: the password is replaced by
``***`` and the real URL is kept in this process's memory only (worker processes receive it
through the pipe that starts them, never through a file). :func:`reveal` turns the redacted
URL back into the real one where the storage is opened.

The driver's own mechanisms keep the password out of the command line altogether and are
what the docs recommend: a ``~/.pgpass`` file or the ``PGPASSWORD`` environment variable,
both read by libpq (``storage=postgresql://user@host/db``).
"""

from __future__ import annotations

import re
from pathlib import Path

REDACTED = "***"
# scheme://user:password@host...: a password holds no "/" or white space (RFC 3986 userinfo),
# and runs to the last "@" before the host (an unencoded "@" in it is accepted).
_URL_WITH_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^\s/]*)@")
_hidden: dict[str, str] = {}


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""

    return _URL_WITH_PASSWORD.sub(lambda match: f"{match.group('head')}{REDACTED}@", text)


def hide_passwords(argv: list[str]) -> list[str]:
    """The command line with passwords redacted; the real URLs are remembered for :func:`reveal`."""
    cleaned = []
    for arg in argv:
        redacted = redact(arg)
        if redacted != arg:
            key, sep, value = arg.partition("=")
            r_key, r_sep, r_value = redacted.partition("=")
            if sep and r_sep and key == r_key:
                _hidden[r_value] = value
        cleaned.append(redacted)
    return cleaned


def reveal(url: str | None) -> str | None:
    """The real URL behind a redacted one that :func:`hide_passwords` saw (else ``url``)."""
    if url is None:
        return None
    return _hidden.get(url, url)


def scrub_folder(folder: Path) -> list[Path]:
    """Redact passwords in the YAML files of ``folder`` (Hydra's ``.hydra``, written before the
    job starts, for a password that came from a config file rather than the command line).
    Returns the files rewritten."""
    rewritten = []
    if not folder.is_dir():
        return rewritten
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        cleaned = redact(text)
        if cleaned != text:
            from nas._io import write_text_atomic

            write_text_atomic(path, cleaned)
            rewritten.append(path)
    return rewritten


__all__ = ["REDACTED", "hide_passwords", "redact", "reveal", "scrub_folder"]
