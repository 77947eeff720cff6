"""Converting a deployment backend's units in a pool of worker processes
(nas/cost/parallel_convert.py): the same artifacts as one process, converted by the workers,
a converter's error raised with the unit's name, and the worker count checked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nas.config import ConfigError
from nas.cost.backend_items import BackendItems, empty_name, with_empty_models
from nas.cost.harness import HarnessConfig
from nas.cost.keys import build_op
from nas.cost.parallel_convert import DEFAULT_MAX_WORKERS, WORKERS_ENV, convert_workers, pool_size
from nas.cost.timing import _file_stem

BACKEND = "openvino"  # the quickest converter of the three deployment backends
#: Eight empty models of distinct shapes: enough items for a pool of two.
NAMES = [empty_name((8 * (i + 1), 16, 16), (8 * (i + 1), 16, 16)) for i in range(8)]


def _items(cache: Path, build=None) -> BackendItems:
    cfg = HarnessConfig(runtime=BACKEND, warmup=1, warmup_time=0.0, repeats=3, min_run_time=0.0,
                        max_run_time=0.05, passes=1, pass_statistic="min")
    return BackendItems(build or with_empty_models(build_op), cfg, cache_dir=cache, file_stem=_file_stem)


def refuse_unit_3(name: str):
    """A builder that fails on one unit (module level: the workers unpickle it)."""
    if name == NAMES[3]:
        raise ValueError(f"cannot build {name}")
    return with_empty_models(build_op)(name)


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_worker_count_is_named(monkeypatch, raw: str):
    monkeypatch.setenv(WORKERS_ENV, raw)
    with pytest.raises(ConfigError, match=f"{WORKERS_ENV} must be a whole number.*{raw!r}"):
        convert_workers()


def test_the_pool_starts_only_for_enough_items(monkeypatch):
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert convert_workers() == 3
    assert [pool_size(n) for n in (0, 7, 8, 11, 12, 500)] == [1, 1, 2, 2, 3, 3]
    monkeypatch.delenv(WORKERS_ENV)
    assert 1 <= convert_workers() <= DEFAULT_MAX_WORKERS


def test_workers_convert_what_one_process_would(tmp_path: Path, monkeypatch):
    serial = _items(tmp_path / "serial")
    monkeypatch.setenv(WORKERS_ENV, "1")
    serial.prepare(NAMES)
    monkeypatch.setenv(WORKERS_ENV, "2")
    pooled = _items(tmp_path / "pooled")

    def not_here(*args, **kwargs):
        raise AssertionError("converted in the parent process, not by the pool")

    monkeypatch.setattr(pooled.backend, "export", not_here)
    pooled.prepare(NAMES)
    for name in NAMES:
        mine, theirs = pooled.artifact(name), serial.artifact(name)
        assert mine.path.exists() and tmp_path / "pooled" in mine.path.parents
        assert mine.input_shape == theirs.input_shape and mine.details == theirs.details
    assert pooled(NAMES[0])["median_ms"] > 0  # what the workers wrote is timed here


def test_a_unit_that_fails_in_a_worker_is_named_and_the_others_stay_converted(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(WORKERS_ENV, "2")
    items = _items(tmp_path / "cache", refuse_unit_3)
    with pytest.raises(ValueError, match=f"cannot build {NAMES[3]}"):
        items.prepare(NAMES)
    again = _items(tmp_path / "cache")
    converted = [name for name in NAMES if again._cached(name) is not None]
    assert NAMES[3] not in converted and NAMES[0] in converted


def test_a_builder_that_cannot_be_pickled_converts_in_this_process(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv(WORKERS_ENV, "2")
    items = _items(tmp_path / "cache", lambda name: with_empty_models(build_op)(name))
    with caplog.at_level(logging.INFO, logger="nas.cost.backend_items"):
        items.prepare(NAMES)
    assert "cannot be sent to worker processes" in caplog.text
    assert all(items._cached(name) is not None for name in NAMES)
