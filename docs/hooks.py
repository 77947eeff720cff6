"""MkDocs hooks: the repository's root pages and result files in the site.

* The site's home page is ``README.md`` and its results page ``RESULTS.md``: both live at the
  repository root, where GitHub shows them, and link the documentation as
  ``docs/<page>.md``. Their stubs in ``docs/`` (``index.md``, ``results.md``) are replaced by
  the root file's text with those links made relative to the site, so one text serves both.
* The figures and tables the experiments wrote (``experiments/results/``, and the shipped
  tables' validation reports in ``latency_tables/``) are copied into the site at the same
  paths, so a page links them as it does on GitHub: ``../../experiments/results/...`` from
  ``docs/results/<page>.md`` (one ``../`` less in the site, where ``docs/`` is the root).
* The API reference accepts the docstrings' grouped fields (see :class:`_GroupedFields`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT_PAGES = {"index.md": "README.md", "results.md": "RESULTS.md"}
RESULT_FOLDERS = ("experiments/results", "latency_tables")
RESULT_FILES = {".png", ".csv", ".yaml", ".json", ".jsonl", ".txt"}


def _root(config) -> Path:  # noqa: ANN001 (MkDocs' config)
    return Path(config["config_file_path"]).parent


def on_files(files, config):  # noqa: ANN001, ANN201 (MkDocs' signature)
    root = _root(config)
    for folder in RESULT_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix in RESULT_FILES and "checkpoints" not in path.parts:
                files.append(File(path.relative_to(root).as_posix(), src_dir=str(root),
                                  dest_dir=config["site_dir"],
                                  use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):  # noqa: ANN001, ANN201, ARG001
    source = ROOT_PAGES.get(page.file.src_uri)
    if source is not None:
        text = (_root(config) / source).read_text(encoding="utf-8")
        text = re.sub(r"\]\(docs/", "](", text)  # docs/commands/nas-search.md -> commands/nas-search.md
        return text.replace("](RESULTS.md)", "](results.md)").replace("](README.md)", "](index.md)")
    depth = page.file.src_uri.count("/")
    for folder in RESULT_FOLDERS:  # ../../experiments/results/x (GitHub) -> ../experiments/results/x
        markdown = markdown.replace("](" + "../" * (depth + 1) + folder, "](" + "../" * depth + folder)
    return markdown


class _GroupedFields(logging.Filter):
    """Drop griffe's complaint about a docstring entry naming several fields at once.

    The project's docstrings may document fields that share a meaning on one line
    (``lr, optimizer, momentum: as in TrainConfig``); Google style has no form for that, so
    griffe reports a parameter called ``'optimizer, scheduler'``. Every other docstring
    warning still fails ``mkdocs build --strict``.
    """

    GROUPED = re.compile(r"'\w+(, \w+)+,?'")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.GROUPED.search(record.getMessage())


for _name in ("griffe", "mkdocs.plugins.griffe"):
    logging.getLogger(_name).addFilter(_GroupedFields())
