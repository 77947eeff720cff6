"""Fixtures the search tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.arch.space import load_space
from nas.cost.harness import HarnessConfig
from nas.cost.lut import LatencyTable

SPACES = Path(__file__).resolve().parents[1] / "data" / "spaces"


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> Path:
    """A table measured here for the tiny test space (64x64, few repeats)."""
    space = load_space(SPACES / "space" / "tiny.yaml")
    harness = HarnessConfig(repeats=3, min_run_time=0.0, warmup=1, warmup_time=0.0, passes=1,
                            max_run_time=0.05)
    directory = tmp_path_factory.mktemp("table")
    table = LatencyTable.create(harness, resolution=64)
    table.build(space, progress=False, save_to=directory)
    return directory
