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


def test_the_public_api_is_lazy_complete_and_has_one_error_base():
    """`import nas` loads no torch; every exported name resolves; project errors share NASError."""
    import importlib
    import pkgutil
    import subprocess
    import sys

    code = "import sys, nas; print('torch' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    import nas
    for name in nas.__all__:
        assert getattr(nas, name) is not None, name
    errors = []
    for info in pkgutil.walk_packages(nas.__path__, "nas."):
        module = importlib.import_module(info.name)
        if getattr(module, "DEVICE_SIDE", False):  # copied to devices that have no nas
            continue
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Exception)
                    and value.__module__ == info.name and value.__name__.endswith("Error")):
                errors.append(value)
    assert len(errors) >= 20
    assert [e.__name__ for e in errors if not issubclass(e, nas.NASError)] == []
