"""Every example of the docs site runs as shown (the README's: ``tests/test_readme.py``).

Python blocks run, YAML blocks load as bneck configs or search spaces, every command of a bash
block is a known program whose arguments parse (argparse tools) or compose (Hydra apps), and the
site builds with ``mkdocs build --strict`` (as ``.ci/run`` builds it).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from doc_blocks import DOCS, LANGUAGES, REPO, SPACE_MARK, blocks, check_command, commands, doc_pages
from nas.arch.codecs import from_yaml

PAGES = doc_pages()


def _name(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_block_has_a_checked_language(page: Path) -> None:
    for language, body in blocks(page):
        assert language in LANGUAGES, f"{_name(page)}: a ```{language} block is not checked:\n{body}"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "yaml")], ids=_name)
def test_every_yaml_block_loads(page: Path) -> None:
    from nas.arch.space import space_from_dict

    for number, (_, text) in enumerate(blocks(page, "yaml"), start=1):
        where = f"{_name(page)} yaml block {number}"
        if text.startswith(SPACE_MARK):
            space = space_from_dict(yaml.safe_load(text), where)
            assert space.params_of(space.sample(random.Random(0)))  # a sample is a point of it
        else:
            spec = from_yaml(text, where)
            assert spec.blocks and spec.resolution > 0


@pytest.mark.parametrize("page", [p for p in PAGES + [REPO / "README.md"] if blocks(p, "bash")],
                         ids=_name)
def test_every_command_is_known_and_its_arguments_parse(page: Path) -> None:
    for _, text in blocks(page, "bash"):
        for argv in commands(text):
            check_command(argv)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=_name)
def test_every_python_block_runs(page: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the examples use paths relative to the checkout
    namespace: dict = {"__name__": "docs"}  # the blocks of one page share their names, in order
    for number, (_, text) in enumerate(blocks(page, "python"), start=1):
        exec(compile(text, f"{_name(page)} python block {number}", "exec"), namespace)


def test_the_search_space_example_runs_a_search(tmp_path: Path) -> None:
    """The search-space page's worked space is valid, and the main job runs on it as shown."""
    import nas
    from nas.arch.space import space_from_dict

    page = DOCS / "concepts" / "search-spaces.md"
    spaces = [text for _, text in blocks(page, "yaml") if text.startswith(SPACE_MARK)]
    assert len(spaces) == 1, "the page shows one worked search space"
    document = yaml.safe_load(spaces[0])
    space = space_from_dict(document, "docs search space")
    assert space.base.num_classes == 10 and space.kernels == (3, 5)
    shown = [argv for _, text in blocks(page, "bash") for argv in commands(text)
             if "hydra.searchpath=[file://$PWD/my_spaces]" in argv]
    assert shown and f"space={document['name']}" in shown[0], "the page runs the search on it"
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / f"{document['name']}.yaml").write_text(spaces[0])
    study = nas.run_search(tmp_path / "run", overrides=[
        f"hydra.searchpath=[file://{tmp_path}]", f"space={document['name']}",
        "latency.backend=torch", "latency.measure_missing=true", "trials=2", "data=synthetic", "evaluator=proxy",
        "data.train_samples=256", "data.val_samples=128", "evaluator.train.epochs=1"])
    assert study.user_attrs["context"]["space"] == document["name"]
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2


def test_no_two_pages_share_a_url() -> None:
    """``x.md`` and ``x/index.md`` both become ``x/index.html``; MkDocs keeps one silently."""
    pages = {p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.md")}
    clashes = [page for page in pages if f"{page}/index" in pages]
    assert not clashes, f"these pages and their folders' index.md share a URL: {clashes}"


@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="mkdocs is not installed (the dev extra)")
def test_the_site_builds_strict(tmp_path: Path) -> None:
    result = subprocess.run(["mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
