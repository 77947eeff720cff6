"""Latency keys and tables: enumeration, storage, errors, incremental builds, prediction."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from nas.arch.codecs import load_spec
from nas.arch.spec import BlockSpec, NetworkSpec
from nas.cost.calibrate import fit_linear, sample_specs
from nas.cost.harness import HarnessConfig
from nas.cost.key_hosts import cover_hosts, synthetic_host
from nas.cost.keys import (
    BadKeyError,
    build_op,
    keys_for,
    keys_for_space,
    keys_for_spec,
    parse_key,
)
from nas.cost.lut import LatencyTable, build_table
from nas.cost.table_files import (
    IncompatibleTableError,
    LatencyTableError,
    MissingKeysError,
    SchemaVersionError,
)
from nas.arch.space import SearchSpace, StageSpace, load_space

FAST = HarnessConfig(warmup=1, warmup_time=0.0, repeats=3, min_run_time=0.0, max_run_time=0.05,
                     passes=2)


def tiny_space(kernels=(3,), se=(False, True)) -> SearchSpace:
    base = NetworkSpec(
        blocks=(BlockSpec(3, 8, 8, False, "RE", 2), BlockSpec(3, 32, 16, False, "RE", 2),
                BlockSpec(3, 32, 16, False, "RE", 1)),
        stem_channels=8, last_conv=32, head_features=64, num_classes=10, resolution=32)
    return SearchSpace(name="tiny", base=base,
                       stages=(StageSpace(8, 2, 1, (8, 16)), StageSpace(16, 2, 2, (32, 48), (-1, 0))),
                       kernels=kernels, se=se, activations=("RE", "HS"))


def known_table(space: SearchSpace, resolution: int = 32) -> tuple[LatencyTable, dict[str, float]]:
    table = LatencyTable.create(FAST, resolution=resolution)
    values = {}
    for i, key in enumerate(keys_for_space(space)):
        values[key] = 0.01 * (i + 1)
        table.set_entry(key, values[key], iqr_ms=0.001, n=5, passes=2)
    return table, values


# ---------------------------------------------------------------------------- keys
@pytest.mark.parametrize("name", ["mobilenetv3_large", "mobilenetv3_small"])
def test_space_keys_cover_every_sampled_spec(name):
    space = load_space(name)
    keys = set(keys_for_space(space))
    rng = random.Random(0)
    for _ in range(300):
        assert set(keys_for_spec(space.sample(rng))) <= keys
    assert set(keys_for_spec(space.canonical())) <= keys
    for key in keys:
        assert parse_key(key).op in ("stem", "bneck", "lastconv", "pool", "head")


def test_keys_name_everything_that_changes_cost():
    spec = load_spec("large")
    keys = keys_for_spec(spec)
    assert keys[0] == "stem_r224_i3_k3_c16_s2_hs"
    assert keys[4] == "bneck_r56_i24_k5_e72_c40_s2_se_re"
    assert keys[-3:] == ["lastconv_r7_i160_k1_c960_s1_hs", "pool_r7_i960", "head_i960_e1280_c1000_hs"]
    dilated = spec.with_blocks(spec.blocks[:-1] + (spec.blocks[-1].replace(dilation=2),))
    assert keys_for_spec(dilated)[-4].endswith("_d2")
    original = keys_for_spec(spec.replace(last_stage="original"))
    assert original[-4:] == ["bneck_r7_i160_k3_e960_c320_s1_hs", "lastconv_r7_i320_k1_c1280_s1_hs",
                             "pool_r7_i1280", "head_i1280_c1000"]
    f = parse_key("bneck_r14_i80_k7_e240_c80_s1_se_hs_d2")
    assert (f.in_res, f.in_ch, f.kernel, f.exp, f.out, f.stride, f.se, f.act, f.dilation) == \
        (14, 80, 7, 240, 80, 1, True, "HS", 2)
    with pytest.raises(BadKeyError):
        parse_key("conv_r7_i3")


@pytest.mark.parametrize("key", ["stem_r32_i3_k3_c8_s2_hs", "bneck_r16_i8_k5_e24_c16_s2_se_re",
                                 "lastconv_r4_i16_k1_c32_s1_hs", "pool_r4_i32",
                                 "head_i32_e64_c10_hs", "head_i64_c10"])
def test_build_op_and_synthetic_host_match_the_key(key):
    module, shape = build_op(key)
    with torch.no_grad():
        module(torch.randn(2, *shape))
    assert key in keys_for_spec(synthetic_host(key))


def test_cover_hosts_reach_every_key_of_the_space():
    space = tiny_space()
    wanted = keys_for_space(space)
    hosts = cover_hosts(space, wanted, per_key=2)
    counts = {k: 0 for k in wanted}
    for host in hosts:
        space.params_of(host)  # a member of the space
        for key in keys_for_spec(host):
            counts[key] += 1
    assert min(counts.values()) >= 2


# ---------------------------------------------------------------------------- storage
def test_csv_and_json_round_trip(tmp_path):
    table, values = known_table(tiny_space())
    table.set_calibration(1.1, 0.05, n=3)
    table.save(tmp_path / "t")
    loaded = LatencyTable.load(tmp_path / "t")
    assert {k: loaded.ms(k) for k in loaded.keys} == pytest.approx(values)
    assert loaded.provenance["runtime"] == "torch-cpu"
    assert loaded.provenance["threads"] == 1 and loaded.provenance["batch"] == 1
    assert loaded.provenance["resolution"] == 32
    assert loaded.calibration["a"] == pytest.approx(1.1)
    assert loaded.harness_config() == FAST
    for field in ("device", "runtime_version", "dtype", "harness", "created", "schema_version"):
        assert field in loaded.provenance
    header = (tmp_path / "t" / "table.csv").read_text().splitlines()[0]
    for column in ("op", "in_res", "in_ch", "exp", "out", "kernel", "stride", "se", "act",
                   "dilation", "median_ms", "iqr_ms"):
        assert column in header.split(",")


def test_schema_version_mismatch_is_an_error(tmp_path):
    table, _ = known_table(tiny_space())
    table.save(tmp_path)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    prov["schema_version"] = 999
    (tmp_path / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(SchemaVersionError, match="schema version 999"):
        LatencyTable.load(tmp_path)


def test_not_a_table_folder(tmp_path):
    with pytest.raises(LatencyTableError, match="not a latency table"):
        LatencyTable.load(tmp_path)
    with pytest.raises(LatencyTableError, match="no such"):
        LatencyTable.load(tmp_path / "nope")


def test_runtime_and_resolution_mismatch_are_errors():
    space = tiny_space()
    table, _ = known_table(space)
    with pytest.raises(IncompatibleTableError, match="runtime"):
        table.check_compatible(runtime="onnxruntime")
    with pytest.raises(IncompatibleTableError, match="resolution"):
        table.check_compatible(resolution=224)
    with pytest.raises(IncompatibleTableError, match="resolution"):
        table.predict(space.base.replace(resolution=64))
    table.check_compatible(runtime="torch-cpu", resolution=32, threads=1, batch=1)


# ---------------------------------------------------------------------------- prediction
def test_predict_sums_the_entries_and_applies_the_calibration():
    space = tiny_space()
    table, values = known_table(space)
    spec = space.sample(random.Random(3))
    expected = sum(values[k] for k in keys_for_spec(spec))
    assert table.predict(spec) == pytest.approx(expected)
    assert [ms for _, ms in table.breakdown(spec)] == pytest.approx([values[k] for k in keys_for_spec(spec)])
    table.set_calibration(2.0, 0.5)
    assert table.predict(spec) == pytest.approx(2.0 * expected + 0.5)
    assert table.predict(spec, calibrated=False) == pytest.approx(expected)


def test_missing_key_raises_naming_it_and_measuring_fills_it():
    space = tiny_space()
    table, _ = known_table(space)
    spec = space.base.with_blocks((BlockSpec(3, 24, 8, False, "RE", 2),) + space.base.blocks[1:])
    with pytest.raises(MissingKeysError) as info:
        table.predict(spec)
    assert info.value.keys == ["bneck_r16_i8_k3_e24_c8_s2_re"]
    assert "bneck_r16_i8_k3_e24_c8_s2_re" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert table.missing_keys([spec]) == ["bneck_r16_i8_k3_e24_c8_s2_re"]
    assert table.build([spec], FAST, progress=False) == ["bneck_r16_i8_k3_e24_c8_s2_re"]
    ms = table.predict(spec)
    assert "bneck_r16_i8_k3_e24_c8_s2_re" in table
    assert ms > 0 and table.missing_keys([spec]) == []


def test_measure_bare_keys_in_synthetic_hosts(tmp_path):
    table = LatencyTable.create(FAST, resolution=32)
    keys = ["bneck_r8_i16_k3_e40_c16_s1_se_hs", "head_i40_e72_c10_hs"]
    added = table.measure(keys, FAST, progress=False, save_to=tmp_path)
    assert added == keys
    assert LatencyTable.load(tmp_path).ms(keys[0]) > 0


def test_isolated_method_builds_too(tmp_path):
    space = tiny_space(se=(False,))
    table = build_table(space, tmp_path, FAST.replace(passes=1), method="isolated", progress=False)
    assert table.missing_keys(space) == []
    assert table.provenance["method"] == "isolated"


def test_interrupted_build_resumes_with_what_is_left(tmp_path):
    space = tiny_space()

    class Stop(Exception):
        pass

    first = []

    def stop(done, total, unit):
        first.append(total)
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        build_table(space, tmp_path, FAST, progress=False, callback=stop)
    assert (tmp_path / "measurements.csv").is_file()
    totals = []
    table = build_table(space, tmp_path, FAST, progress=False,
                        callback=lambda done, total, unit: totals.append(total))
    assert totals[0] == first[0] - 3  # the three finished units were not measured again
    assert len(totals) == first[0] - 3
    assert table.missing_keys(space) == []
    assert not (tmp_path / "measurements.csv").exists()
    reloaded = LatencyTable.load(tmp_path)
    assert reloaded.provenance["spaces"] == ["tiny"]
    # A second build has nothing left to do.
    assert reloaded.build(space, FAST, progress=False) == []


def test_calibration_fit_recovers_a_linear_relation():
    x = [3.0, 5.0, 8.0, 13.0, 21.0]
    fit = fit_linear(x, [1.2 * v + 0.7 for v in x])
    assert fit["a"] == pytest.approx(1.2) and fit["b"] == pytest.approx(0.7)
    assert fit["fit_mape_pct"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        fit_linear([1.0, 1.0], [2.0, 3.0])


def test_calibrate_stores_the_fit_in_the_provenance(tmp_path, monkeypatch):
    from nas.cost import calibrate as cal

    space = tiny_space()
    table, _ = known_table(space)
    specs = sample_specs(space, 4, 1000)
    fake = [{"ms": 3.0 * table.predict(s) + 0.25, "median_ms": 0.0, "iqr_ms": 0.0, "pass_spread_ms": 0.0,
             "passes": 1, "loadavg": "", "rounds_ms": []} for s in specs]
    monkeypatch.setattr(cal, "measure_end_to_end", lambda *a, **k: fake)
    record = cal.calibrate(table, specs, FAST, progress=False)
    assert record["a"] == pytest.approx(3.0) and record["b"] == pytest.approx(0.25)
    table.save(tmp_path)
    assert LatencyTable.load(tmp_path).calibration["a"] == pytest.approx(3.0)


def test_keys_for_mixes_spaces_specs_and_keys():
    space = tiny_space()
    spec = space.sample(random.Random(0))
    keys = keys_for([space, spec, "pool_r7_i960"])
    assert len(keys) == len(set(keys))
    assert "pool_r7_i960" in keys and set(keys_for_spec(spec)) <= set(keys)


def test_onnxruntime_table_measures_exported_ops(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_LUT_CACHE", str(tmp_path / "cache"))
    cfg = FAST.replace(runtime="onnxruntime", passes=1)
    table = LatencyTable.create(cfg, resolution=32)
    assert table.provenance["method"] == "isolated"
    assert table.provenance["runtime"] == "onnxruntime" and table.provenance["runtime_version"]
    keys = ["pool_r4_i32", "head_i32_c10"]
    assert table.measure(keys, cfg, progress=False, save_to=tmp_path / "t") == keys
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2
    loaded = LatencyTable.load(tmp_path / "t")
    assert loaded.ms("pool_r4_i32") > 0
    with pytest.raises(IncompatibleTableError, match="runtime"):
        loaded.measure(["head_i32_c11"], FAST, progress=False)


def test_split_half_tau_measures_the_measurements_self_agreement():
    from nas.cost.validate import split_half_tau

    def spec_rounds(even: float, odd: float) -> dict:
        rounds = [even, odd, even + 0.5, odd + 0.5]
        return {"rounds_ms": [r + 1.0 for r in rounds], "rounds_min_ms": rounds}

    agreeing = [spec_rounds(v, v + 0.1) for v in (1.0, 2.0, 3.0, 4.0)]
    reversed_halves = [spec_rounds(v, 5.0 - v) for v in (1.0, 2.0, 3.0, 4.0)]
    assert split_half_tau(agreeing, "min") == pytest.approx(1.0)
    assert split_half_tau(agreeing, "median") == pytest.approx(1.0)
    assert split_half_tau(reversed_halves, "min") == pytest.approx(-1.0)
    one_round = [{"rounds_ms": [1.0], "rounds_min_ms": [1.0]}] * 3
    assert math.isnan(split_half_tau(one_round, "min"))


def test_split_half_within_counts_specs_whose_halves_agree_within_ten_percent():
    from nas.cost.validate import split_half_within

    def spec_rounds(even_min: float, odd_min: float) -> dict:
        return {"rounds_ms": [even_min + 1, odd_min + 1] * 2, "rounds_min_ms": [even_min, odd_min] * 2}

    # Halves 5% apart (agree), 20% apart (do not), equal (agree), 9.5% apart of their mean.
    measured = [spec_rounds(1.0, 1.05), spec_rounds(1.0, 1.2), spec_rounds(2.0, 2.0), spec_rounds(1.0, 1.1)]
    assert split_half_within(measured, "min") == pytest.approx(75.0)
    assert split_half_within(measured, "min", bound=0.04) == pytest.approx(25.0)
    assert math.isnan(split_half_within([{"rounds_ms": [1.0], "rounds_min_ms": [1.0]}], "min"))


@pytest.mark.parametrize("folder, runtime", [("cpu-torch-1t-b1-224", "torch-cpu"),
                                             ("cpu-ort-1t-b1-224", "onnxruntime")])
def test_shipped_tables_cover_the_default_spaces_and_carry_their_validation(folder, runtime):
    import yaml

    from nas.cost.table_files import resolve_table_dir
    from nas.arch.space import load_space

    path = resolve_table_dir(folder)
    table = LatencyTable.load(path)
    table.check_compatible(runtime=runtime, resolution=224)
    summary = yaml.safe_load((path / "validation_summary.yaml").read_text())
    for name in ("mobilenetv3_large", "mobilenetv3_small"):
        assert table.missing_keys(load_space(name)) == []
        assert (path / f"validation_{name}.csv").is_file() and (path / f"validation_{name}.png").is_file()
        assert summary[name]["metrics"]["n"] >= 100
        assert summary[name]["metrics"]["within_10_pct"] >= 95.0
