"""The studies are one package run from the checkout root (``python -m experiments.<study>``):
no ``sys.path`` edits, every module-level import at the top (no E402, no ``noqa`` hiding
one), usage lines that say ``-m``, and the package left out of the wheel."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted((REPO / "experiments").glob("*.py"))


def sys_path_uses(tree: ast.Module) -> list[int]:
    """Lines that touch ``sys.path`` (an insert, an append, an assignment: any of them)."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "path"
            and isinstance(node.value, ast.Name) and node.value.id == "sys"]


def late_imports(tree: ast.Module) -> list[int]:
    """Lines of module-level imports that follow other module-level code (pycodestyle E402;
    stricter: a conditional before an import counts too)."""
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    late, code_seen = [], False
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if code_seen:
                late.append(node.lineno)
        else:
            code_seen = True
    return late


def test_the_checks_catch_what_they_look_for() -> None:
    tree = ast.parse('"""doc"""\nimport sys\nsys.path.insert(0, "x")\nimport os\n')
    assert sys_path_uses(tree) == [3] and late_imports(tree) == [4]
    assert sys_path_uses(ast.parse("from sys import path\nimport os.path\nos.path.join('a')\n")) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_sys_path_edit_and_every_import_at_the_top(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    assert sys_path_uses(tree) == [], f"{path.name}: sys.path at lines {sys_path_uses(tree)}"
    assert late_imports(tree) == [], f"{path.name}: imports below other code at lines {late_imports(tree)}"
    assert "E402" not in text, f"{path.name}: a noqa for E402 hides an import below other code"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_usage_lines_run_the_study_as_a_module(path: Path) -> None:
    by_path = re.findall(r"python3?\s+experiments/\w+\.py", path.read_text(encoding="utf-8"))
    assert by_path == [], f"{path.name}: {by_path} (write `python -m experiments.<study>`)"


def test_the_wheel_holds_nas_and_not_the_studies() -> None:
    setuptools = pytest.importorskip("setuptools")
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_packages(where=str(REPO), include=find["include"])
    assert "nas" in packages and not [p for p in packages if p.split(".")[0] == "experiments"]
    assert (REPO / "experiments" / "__init__.py").is_file()  # importable from the checkout root
