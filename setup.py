"""Build hook: put the top-level search spaces and latency tables into the wheel.

Everything else is declared in pyproject.toml. An editable install reads the folders from the
checkout (see nas/shipped.py), so only a regular build copies them, as ``nas/_shipped/``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED_FOLDERS = ("search_spaces", "latency_tables")  # as nas.shipped.SHIPPED_FOLDERS


class BuildPyWithShippedData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for name in SHIPPED_FOLDERS:
            shutil.copytree(root / name, Path(self.build_lib) / "nas" / "_shipped" / name,
                            dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithShippedData})
