"""Where the shipped search spaces and latency tables are, in a checkout and in a wheel.

They live at the repository's top level (``search_spaces/``, ``latency_tables/``) so that a
researcher finds and edits them there. A wheel cannot install top-level folders, so the build
(``setup.py``) copies them into the package as ``nas/_shipped/<name>``; this module looks in
the checkout first, then in the installed package.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SHIPPED_FOLDERS = ("search_spaces", "latency_tables")


def shipped_dir(name: str) -> Path:
    """The folder ``name`` (one of :data:`SHIPPED_FOLDERS`), from a checkout or a wheel."""
    if name not in SHIPPED_FOLDERS:
        raise ValueError(f"unknown shipped folder {name!r}; allowed: {list(SHIPPED_FOLDERS)}")
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    return Path(str(files("nas") / "_shipped" / name))
