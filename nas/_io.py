"""Small helpers shared by every module that writes results: atomic replacement, timestamps,
the user's cache folder.

Kept free of torch and pandas so that light modules (latency tables) can use it.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A per-process temporary name beside ``path`` (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + f".tmp{os.getpid()}")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename over ``path``: a kill never leaves
    half a file, and a reader sees the old or the new content."""
    path = Path(path)
    tmp = temporary_sibling(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


__all__ = ["default_cache_dir", "now_iso", "temporary_sibling", "write_text_atomic"]
