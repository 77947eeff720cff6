"""Latency tables built through the deployment backends (LiteRT, OpenVINO): each key
converted and timed as its own model net of the runtime's empty model, calibrated on whole
networks converted the same way, resumable, and refused where another backend is asked for.

A 32 px space of a few keys, short sampling; converted files go to a temporary cache.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nas.arch.space import load_space
from nas.cli.lut import main
from nas.cost.backend_items import net_figures
from nas.cost.backends import BackendUnavailableError, OpenVINOBackend
from nas.cost.harness import HarnessConfig
from nas.cost.host_table import host_table
from nas.cost.lut import LatencyTable, build_table
from nas.cost.policy import LatencyPolicy, resolve_table
from nas.cost.table_files import IncompatibleTableError, LOG_FILE
from nas.cost.validate import validate
from nas.config import ConfigError
from tests.cost.test_cli_lut import write_space

pytestmark = pytest.mark.usefixtures("one_thread")


def fast(runtime: str, passes: int = 2) -> HarnessConfig:
    return HarnessConfig(runtime=runtime, warmup=2, warmup_time=0.0, repeats=5, min_run_time=0.01,
                         max_run_time=0.1, passes=passes, pass_statistic="min")


@pytest.fixture(autouse=True)
def artifact_cache(tmp_path_factory, monkeypatch) -> Path:
    folder = tmp_path_factory.getbasetemp() / "converted"
    monkeypatch.setenv("NAS_LUT_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    # 32 px, kernel 3, no SE, RE or HS per block: a few keys, a dozen distinct networks.
    return write_space(tmp_path_factory.mktemp("space"), se=(False,), exp1=(8,), exp2=(32,))


@pytest.fixture(scope="module")
def space(space_file):
    return load_space(space_file)


@pytest.fixture(scope="module")
def space_96px(tmp_path_factory):
    # At 32 px a whole network runs in ~0.036 ms in OpenVINO, so a few microseconds of host
    # jitter per unit were 40% of it (CI saw 0.052 predicted). At 96 px a network takes
    # ~0.08 ms, the units' kernels outweigh the jitter, and the error measured 1-3%.
    return load_space(write_space(tmp_path_factory.mktemp("space96"), se=(False,), exp1=(8,),
                                  exp2=(32,), resolution=96))


@pytest.mark.parametrize("backend", ["openvino", "litert"])
def test_a_backend_table_names_its_runtime_and_keeps_figures_net_of_the_empty_model(backend, space, tmp_path):
    table = build_table(space, tmp_path / "table", fast(backend), progress=False)
    prov = table.provenance
    assert prov["runtime"] == backend and prov["method"] == "isolated" and prov["net_of_empty_model"]
    assert prov["runtime_version"] and prov["precision"] == "fp32" and prov["threads"] == 1
    assert prov["delegate"] == {"litert": "XNNPACK", "openvino": "CPU plugin"}[backend]
    if backend == "litert":
        coverage = prov["delegate_coverage"]
        assert coverage["keys"] == len(table) and coverage["fully_delegated"] <= len(table)
    for key in table.keys:  # the figure is net of the empty model; both are kept
        entry = table.entry(key)
        assert entry["baseline_ms"] > 0 and entry["raw_ms"] >= entry["ms"] > 0
        floor = min(entry["raw_ms"], 0.001)  # a sub-microsecond unit keeps its own figure
        assert entry["ms"] == pytest.approx(max(entry["raw_ms"] - entry["baseline_ms"], floor))


def test_a_backend_table_predicts_held_out_networks_after_calibration(space_96px, tmp_path):
    # One backend end to end here (OpenVINO converts a network in a second, LiteRT in several);
    # every backend's held-out accuracy is measured on 40 networks a space by
    # experiments/backend_validation.py. The calibration networks are timed in the same
    # interleaved rounds as the held-out ones (validate's recalibrate): on a shared 2-core
    # machine the level moves by tens of percent between moments (CI measured a held-out
    # network 1.5x the level its calibration had been timed at a minute before), which says
    # nothing about the table. Within a round the level moves too (a 1.5x error on one CI
    # host), so the networks are timed anchored: each call alternating with the space's
    # canonical network, measured by the ratio to it (nas.cost.anchored).
    space, harness = space_96px, fast("openvino")
    table = build_table(space, tmp_path / "table", harness, progress=False)
    report = validate(table, space, n=2, seed=0, harness=harness, rounds=3, recalibrate=4, progress=False,
                      anchor=space.base)
    assert report.settings["anchor"] and all(row["anchored_ratio"] > 0 for row in report.rows)
    recalibrated = report.metrics_recalibrated
    # In this small space the networks differ by less than the timing noise, so the fitted slope
    # may take either sign; what must hold is the held-out prediction below.
    assert recalibrated["n_calibration"] >= 2 and math.isfinite(recalibrated["a"])
    assert len(report.rows) == 2
    for row in report.rows:
        error = abs(row["predicted_recalibrated_ms"] - row["measured_ms"]) / row["measured_ms"]
        assert error < 0.3, row


@pytest.mark.parametrize("raw, base, net", [(0.5, 0.2, 0.3), (0.2, 0.5, 0.001), (0.0008, 0.0009, 0.0008)])
def test_a_net_figure_is_positive_and_never_above_what_was_measured(raw, base, net):
    # A unit no slower than the empty model ends at the floor, and a sub-microsecond unit
    # (LiteRT times a tiny 32 px op below 1 us) keeps its own figure instead of the floor.
    figures = net_figures({"ms": raw, "p90_ms": raw * 2}, {"ms": base})
    assert figures["ms"] == pytest.approx(net) and figures["raw_ms"] == raw
    assert figures["baseline_ms"] == base and figures["p90_ms"] == raw * 2


def test_a_resumed_build_measures_and_converts_nothing_twice(space, tmp_path, monkeypatch):
    out, harness = tmp_path / "table", fast("openvino", passes=1)
    first: list[str] = []

    def stop_after_four(done: int, total: int, unit: str) -> None:
        first.append(unit)
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_table(space, out, harness, progress=False, callback=stop_after_four)
    assert (out / LOG_FILE).is_file() and len(first) == 4

    exports: list[str] = []
    original = OpenVINOBackend.export

    def counting_export(self, module, shape, path, **kw):
        exports.append(kw.get("unit"))
        return original(self, module, shape, path, **kw)

    monkeypatch.setattr(OpenVINOBackend, "export", counting_export)
    second: list[str] = []
    table = build_table(space, out, harness, progress=False,
                        callback=lambda done, total, unit: second.append(unit))
    assert not set(first) & set(second)
    assert exports == []  # every unit was converted before the first was timed, and cached
    assert not table.missing_keys(space)
    assert not (out / LOG_FILE).exists()


def test_a_table_of_another_backend_is_refused_naming_both(space, space_file, tmp_path, capsys):
    table = LatencyTable.create(fast("openvino"), resolution=32)
    for key in sorted(space_keys(space)):
        table.set_entry(key, 0.05)
    table.save(tmp_path / "ov")
    with pytest.raises(IncompatibleTableError) as info:
        resolve_table(LatencyPolicy(table=str(tmp_path / "ov"), backend="litert", resolution=32),
                      space, None)
    assert "'openvino'" in str(info.value) and "'litert'" in str(info.value)
    with pytest.raises(SystemExit) as code:
        main(["validate", "--table", str(tmp_path / "ov"), "--space", str(space_file),
              "--backend", "litert", "--no-progress"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.count("\n") == 1
    assert "backend 'openvino'" in err and "backend 'litert'" in err


def test_missing_extra_is_one_line_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ai_edge_litert", None)  # as if not installed
    with pytest.raises(SystemExit) as code:
        main(["build", "--backend", "litert", "--space", "mobilenetv3_small", "--out",
              str(tmp_path / "t"), "--no-progress"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "pip install 'mnv3-nas[litert]'" in err
    assert not (tmp_path / "t").exists()  # stopped before anything was written
    with pytest.raises(BackendUnavailableError, match=r"mnv3-nas\[litert\]"):
        resolve_table(LatencyPolicy(backend="litert"), load_space("mobilenetv3_small"), None)


def test_policy_backend_sets_the_runtime():
    assert LatencyPolicy(backend="litert").runtime == "litert"
    assert LatencyPolicy(backend="onnxruntime").runtime == "onnxruntime"
    assert LatencyPolicy(backend="torch", runtime="torch-cuda").runtime == "torch-cuda"
    assert LatencyPolicy(runtime="onnxruntime").backend is None  # runtime alone still works
    with pytest.raises(ConfigError, match="'litert' and runtime 'onnxruntime'"):
        LatencyPolicy(backend="litert", runtime="onnxruntime")
    with pytest.raises(ConfigError, match="backend"):
        LatencyPolicy(backend="tflite")


def test_auto_builds_and_calibrates_this_hosts_table_for_a_backend(space, tmp_path):
    choice = host_table(space, runtime="openvino", resolution=32, cache_dir=tmp_path, progress=False)
    table = LatencyTable.load(choice.path)
    assert "measured on this host now" in choice.reason and "no table ships" in choice.reason
    assert table.runtime == "openvino" and table.calibration and not table.missing_keys(space)
    again = host_table(space, runtime="openvino", resolution=32, cache_dir=tmp_path, progress=False)
    assert again.path == choice.path and "cached" in again.reason


def space_keys(space) -> list[str]:
    from nas.cost.keys import keys_for_space

    return list(keys_for_space(space))
