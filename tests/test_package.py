"""Packaging: the version, the licence and the typing marker ship with the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

import nas

REPO = Path(__file__).resolve().parents[1]


def test_version_license_and_typing_marker() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert nas.__version__ == project["version"]
    assert "Apache License" in (REPO / "LICENSE").read_text() and project["license"] == "Apache-2.0"
    assert (Path(nas.__file__).parent / "py.typed").is_file()


def test_python_m_nas_lists_every_console_script() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "nas"], capture_output=True, text=True, check=True).stdout
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert nas.__version__ in out and all(name in out for name in scripts)
