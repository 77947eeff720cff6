"""latency.table=auto: the shipped table only where it was measured on this host, otherwise
this host's own table, measured once into the user's cache and calibrated."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nas.cost import host_table as host_table_module
from nas.cost.harness import HarnessConfig
from nas.cost.host_table import SHIPPED_FOR_RUNTIME, host_table
from nas.cost.lut import LatencyTable
from nas.arch.space import load_space

SPACE = load_space(Path(__file__).resolve().parents[1] / "data" / "spaces" / "space" / "tiny.yaml")
# A quick harness for a 64x64 space; host_table keeps it and sets 3 passes.
QUICK = HarnessConfig(repeats=3, min_run_time=0.0, warmup=1, warmup_time=0.0, passes=1,
                      max_run_time=0.05)


@pytest.fixture(scope="module")
def measured_here(tmp_path_factory) -> Path:
    """A 'shipped' table for the tiny space, measured on this host."""
    shipped = tmp_path_factory.mktemp("shipped")
    table = LatencyTable.create(QUICK, resolution=64)
    table.build(SPACE, progress=False, save_to=shipped / SHIPPED_FOR_RUNTIME["torch-cpu"][0])
    return shipped


def test_a_table_measured_on_this_host_is_used_as_shipped(measured_here: Path, tmp_path: Path):
    choice = host_table(SPACE, runtime="torch-cpu", resolution=64, cache_dir=tmp_path,
                        shipped_dir=measured_here, progress=False)
    assert choice.path == measured_here / SHIPPED_FOR_RUNTIME["torch-cpu"][0]
    assert "measured on this host" in choice.reason
    assert not (tmp_path / "tables").exists()  # nothing measured


def test_another_hosts_table_gives_way_to_this_hosts_cached_calibrated_one(
        measured_here: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    other = tmp_path / "other"
    folder = other / SHIPPED_FOR_RUNTIME["torch-cpu"][0]
    folder.mkdir(parents=True)
    for path in (measured_here / SHIPPED_FOR_RUNTIME["torch-cpu"][0]).iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    provenance = json.loads((folder / "provenance.json").read_text())
    provenance["device"] = "Imaginary CPU 9000"
    (folder / "provenance.json").write_text(json.dumps(provenance))

    cache = tmp_path / "cache"
    first = host_table(SPACE, runtime="torch-cpu", resolution=64, cache_dir=cache,
                       shipped_dir=other, progress=False)
    assert first.path.parent == cache / "tables"
    assert "measured on this host now" in first.reason and "Imaginary CPU 9000" in first.reason
    table = LatencyTable.load(first.path)
    assert table.missing_keys(SPACE) == [] and table.calibration is not None
    assert table.calibration["n"] == 12
    assert table.harness_config().passes == host_table_module.QUICK_PASSES
    assert not table.check_host()  # the new table belongs to this host

    def no_measuring(*args, **kwargs):
        raise AssertionError("the cached table was measured again")

    monkeypatch.setattr("nas.cost.lut.build_table", no_measuring)
    again = host_table(SPACE, runtime="torch-cpu", resolution=64, cache_dir=cache,
                       shipped_dir=other, progress=False)
    assert again.path == first.path and "cached" in again.reason



def test_of_several_shipped_tables_for_a_runtime_the_one_from_this_host_is_used(
        measured_here: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A runtime ships one table per CPU model: another host's is passed over, named."""
    shipped = tmp_path / "shipped"
    source = measured_here / SHIPPED_FOR_RUNTIME["torch-cpu"][0]
    for name, device in (("epyc-table", "Imaginary CPU 9000"), ("this-host-table", None)):
        (shipped / name).mkdir(parents=True)
        for path in source.iterdir():
            (shipped / name / path.name).write_bytes(path.read_bytes())
        if device:
            provenance = json.loads((shipped / name / "provenance.json").read_text())
            provenance["device"] = device
            (shipped / name / "provenance.json").write_text(json.dumps(provenance))
    monkeypatch.setitem(SHIPPED_FOR_RUNTIME, "torch-cpu", ("epyc-table", "this-host-table"))
    choice = host_table(SPACE, runtime="torch-cpu", resolution=64, cache_dir=tmp_path / "cache",
                        shipped_dir=shipped, progress=False)
    assert choice.path == shipped / "this-host-table"
    assert not (tmp_path / "cache").exists()  # nothing measured
    monkeypatch.setitem(SHIPPED_FOR_RUNTIME, "torch-cpu", ("epyc-table",))
    other = host_table(SPACE, runtime="torch-cpu", resolution=64, cache_dir=tmp_path / "cache",
                       shipped_dir=shipped, progress=False)
    assert other.path.parent == tmp_path / "cache" / "tables"
    assert "epyc-table differs from this host" in other.reason and "Imaginary CPU 9000" in other.reason


def test_a_matching_table_that_lacks_the_spaces_keys_gives_way_too(measured_here: Path, tmp_path: Path):
    bigger = dataclasses.replace(SPACE, name="tiny_k7", kernels=(3, 5, 7))
    choice = host_table(bigger, runtime="torch-cpu", resolution=64, cache_dir=tmp_path,
                        shipped_dir=measured_here, progress=False)
    assert "lacks" in choice.reason and choice.path.parent == tmp_path / "tables"
    assert LatencyTable.load(choice.path).missing_keys(bigger) == []


def test_an_unwritable_cache_is_a_clear_error(measured_here: Path, tmp_path: Path):
    from nas.cost.table_files import LatencyTableError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LatencyTableError, match="set NAS_CACHE_DIR to a writable folder"):
        host_table(SPACE, runtime="torch-cpu", resolution=64,
                   cache_dir=blocker, shipped_dir=tmp_path / "none", progress=False)


def test_a_second_builder_says_it_waits_for_the_lock(tmp_path: Path, caplog):
    import fcntl
    import logging
    import threading

    folder = tmp_path / "tables" / "some-table"
    folder.parent.mkdir(parents=True)
    entered = threading.Event()
    with open(folder.with_name(folder.name + ".lock"), "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process measuring the table

        def second() -> None:
            with host_table_module._locked(folder):
                entered.set()

        with caplog.at_level(logging.INFO, logger=host_table_module.__name__):
            waiter = threading.Thread(target=second)
            waiter.start()
            assert not entered.wait(0.3)  # blocked while the lock is held
            fcntl.flock(holder, fcntl.LOCK_UN)
            waiter.join(5)
    assert entered.is_set()
    assert any("waiting for another process" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("runtime", sorted(SHIPPED_FOR_RUNTIME))
def test_every_table_named_for_a_runtime_ships_measured_in_it(runtime: str):
    """The names ``auto`` tries are real shipped tables of that runtime, each covering a space."""
    from nas.cost.table_files import SHIPPED_TABLES_DIR

    for name in SHIPPED_FOR_RUNTIME[runtime]:
        table = LatencyTable.load(SHIPPED_TABLES_DIR / name)
        assert table.provenance["runtime"] == runtime and table.calibration is not None
        covered = [s for s in ("mobilenetv3_small", "mobilenetv3_large") if not table.missing_keys(load_space(s))]
        assert covered, f"{name} holds every key of neither shipped space"


def test_the_main_job_measures_latency_in_executorch_by_default():
    from nas.api import search_config

    config = search_config()
    assert config.latency.backend == "executorch" and config.latency.runtime == "executorch"
    assert config.latency.table == "auto"
