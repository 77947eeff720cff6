"""Packaging: the version, the licence and the typing marker ship with the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

import nas

REPO = Path(__file__).resolve().parents[1]


def test_version_license_and_typing_marker() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert nas.__version__ == project["version"]
    assert "Apache License" in (REPO / "LICENSE").read_text() and project["license"]["text"] == "Apache-2.0"
    assert (Path(nas.__file__).parent / "py.typed").is_file()
