"""NetAdapt: proposals (delta cut, largest count, legal residuals), the picking rules,
on-demand table measurement, and resuming an interrupted refinement exactly."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from nas.arch.spec import BlockSpec, NetworkSpec, conv_output_size
from nas.cost.harness import HarnessConfig
from nas.cost.keys import bneck_key, head_key, lastconv_key, parse_key, pool_key, stem_key
from nas.cost.lut import LatencyTable
from nas.cost.table_files import MissingKeysError
from nas.models.builder import build_model
from nas.models.channel_groups import STEM, has_expand_conv, residual_groups, residual_pattern
from nas.models.prune import prune_model
from nas.netadapt.config import NetAdaptConfig, NetAdaptError
from nas.netadapt.finetune import FineTuner
from nas.netadapt.latency import TableLatency
from nas.netadapt.loop import netadapt
from nas.netadapt.proposals import (
    channel_candidates,
    make_proposals,
    preselect,
    shrink_expansion,
    shrink_group,
)
from nas.netadapt.selection import pick, scale_width, width_for_latency
from nas.training.data_config import DataConfig
from nas.training.train_config import TrainConfig

from conftest import TINY  # five blocks with every pruning case


# Large-style start: the stem shares its width with a stride-1 block without expand conv;
# a stride-1 block whose in (24) differs from its out (40) must never get a residual.
TIED = NetworkSpec(blocks=(
    BlockSpec(3, 16, 16, False, "RE", 1),
    BlockSpec(3, 64, 24, False, "RE", 2),
    BlockSpec(3, 72, 40, True, "HS", 1),
    BlockSpec(3, 120, 40, True, "HS", 1),
), stem_channels=16, last_conv=160, head_features=128, num_classes=10, resolution=32, name="tied")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


# ---------------------------------------------------------------------------- a known table
def formula_ms(key: str) -> float:
    """A made-up latency that grows with the work of the op (deterministic)."""
    f = parse_key(key)
    if f.op == "bneck":
        out_res = conv_output_size(f.in_res, f.stride)
        work = (f.in_res ** 2 * f.in_ch * f.exp + out_res ** 2 * f.exp * (f.kernel ** 2 + f.out)
                + (f.exp ** 2 // 2 if f.se else 0))
    elif f.op in ("stem", "lastconv"):
        work = conv_output_size(f.in_res, f.stride) ** 2 * f.in_ch * f.out * f.kernel ** 2
    elif f.op == "pool":
        work = f.in_res ** 2 * f.in_ch
    else:
        work = f.in_ch * (f.exp or f.out) + f.exp * f.out
    return 0.01 + 1e-5 * work


def _counts(n: int) -> list[int]:
    return sorted({*range(8, n + 1, 8), n})


def formula_table(spec: NetworkSpec, directory: Path) -> Path:
    """A real table (saved through its API) holding every key any narrowing of ``spec`` needs."""
    table = LatencyTable.create(HarnessConfig(), resolution=spec.resolution, note="formula, tests")
    keys = {stem_key(spec.resolution, c, spec.stem_activation) for c in _counts(spec.stem_channels)}
    for ctx in spec.contexts():
        b = ctx.block
        for i, e, o in itertools.product(_counts(ctx.in_channels), _counts(b.expansion), _counts(b.out)):
            keys.add(bneck_key(ctx.in_resolution, i, b.replace(expansion=e, out=o)))
    size = spec.final_resolution
    keys |= {lastconv_key(size, i, spec.last_conv, spec.head_activation)
             for i in _counts(spec.blocks[-1].out)}
    keys |= {pool_key(size, spec.last_conv),
             head_key(spec.last_conv, spec.head_features, spec.num_classes, spec.head_activation)}
    for key in keys:
        table.set_entry(key, formula_ms(key), n=1, passes=1, method="formula")
    return table.save(directory)


def formula_latency(spec: NetworkSpec, tmp_path: Path) -> TableLatency:
    return TableLatency(LatencyTable.load(formula_table(spec, tmp_path / f"lut_{spec.name}")))


# ---------------------------------------------------------------------------- proposals
def test_channel_candidates():
    assert list(channel_candidates(40, 8, 8)) == [32, 24, 16, 8]
    assert list(channel_candidates(44, 8, 16)) == [40, 32, 24, 16]
    assert list(channel_candidates(8, 8, 8)) == []


@pytest.mark.parametrize("spec", [TINY, TIED], ids=["tiny", "tied"])
def test_every_proposal_meets_the_cut_with_the_largest_legal_count(spec, tmp_path):
    latency = formula_latency(spec, tmp_path)
    start = latency(spec)
    cut = 0.03 * start
    cfg = NetAdaptConfig(target_fraction=0.5)
    proposals = make_proposals(spec, latency, cut, cfg)
    kinds = {p.kind for p in proposals}
    assert kinds == {"expansion", "bottleneck"}
    for p in proposals:
        assert start - p.latency_ms >= cut - 1e-12, p.name
        assert p.latency_ms == pytest.approx(latency(p.spec))
        # The largest count: every larger legal count misses the cut.
        for c in range(p.after + cfg.divisor, p.before, cfg.divisor):
            if p.kind == "expansion":
                bigger = shrink_expansion(spec, p.positions[0], c)
            else:
                group = next(g for g in residual_groups(spec) if g.positions == p.positions)
                bigger = shrink_group(spec, group, c)
            assert bigger is None or start - latency(bigger) < cut, (p.name, c)
        # Legal: same residual pattern and expand convs; the model builds, prunes and runs.
        assert residual_pattern(p.spec) == residual_pattern(spec)
        assert has_expand_conv(p.spec) == has_expand_conv(spec)
        p.spec.validate()
        model = build_model(spec, num_classes=10).eval()
        out = prune_model(model, p.spec).eval()(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10)


def test_group_shrink_follows_tied_depthwise_and_skips_illegal_counts():
    groups = residual_groups(TIED)
    first = groups[0]
    assert first.positions == (STEM, 0)
    shrunk = shrink_group(TIED, first, 8)
    assert shrunk.stem_channels == 8 and shrunk.blocks[0].out == 8
    assert shrunk.blocks[0].expansion == 8  # no expand conv: the depthwise follows its input
    # Group {2, 3} (40) fed by block 1 (24): its first member is stride 1, so 24 would
    # create a residual in block 2 -- skipped.
    group = next(g for g in groups if g.positions == (2, 3))
    assert shrink_group(TIED, group, 24) is None
    assert shrink_group(TIED, group, 32) is not None
    # An expansion equal to the block's input would drop the expand conv -- skipped.
    assert shrink_expansion(TIED, 1, 16) is None
    assert shrink_expansion(TIED, 0, 8) is None  # no expand conv to shrink


@pytest.mark.parametrize("mode", ["table", "anchored"])
def test_missing_keys_are_measured_on_demand(tmp_path, mode):
    # A real, empty table measured with a tiny harness at 32x32.
    harness = HarnessConfig(warmup=1, warmup_time=0.0, repeats=3, min_run_time=0.0,
                            max_run_time=0.05, passes=2)
    table = LatencyTable.create(harness, resolution=32, note="tests")
    with pytest.raises(MissingKeysError):
        TableLatency(table)(TINY)
    latency = TableLatency(table, measure_missing=True, save_to=tmp_path / "lut", mode=mode)
    start = latency(TINY)
    cfg = NetAdaptConfig(target_fraction=0.5, kinds=("expansion",))
    proposals = make_proposals(TINY, latency, 0.01 * start, cfg, current_ms=start)
    assert latency.measured > len(set(table.keys)) // 2 and (tmp_path / "lut" / "table.csv").is_file()
    for p in proposals:
        assert start - p.latency_ms >= 0.01 * start - 1e-12
    saved = LatencyTable.load(tmp_path / "lut")
    assert len(saved) == len(table) and latency(TINY) == pytest.approx(start)
    if mode == "anchored":
        assert "context-anchored" in {saved.entry(k)["method"] for k in saved.keys}


@pytest.mark.parametrize("statistic, expected_ms", [("min", 1.0), ("median", 2.0)])
def test_anchored_keys_use_the_tables_pass_statistic(monkeypatch, statistic, expected_ms):
    # Every op "measures" median 2 ms, minimum 1 ms: an empty table has no anchors (ratio 1),
    # so each new entry is the harness's own figure -- the minimum for the shipped tables.
    import nas.cost.timing as timing
    from nas.cost.harness import Timing
    from nas.cost.keys import keys_for_spec

    def fake_measure(spec, cfg=None, *, model=None):
        op = Timing(median_ms=2.0, iqr_ms=0.1, mean_ms=2.1, n=10, min_ms=1.0)
        return op, [(key, op) for key in keys_for_spec(spec)]

    monkeypatch.setattr(timing, "measure_in_context", fake_measure)
    harness = HarnessConfig(passes=3, pass_statistic=statistic)
    table = LatencyTable.create(harness, resolution=32, note="tests")
    TableLatency(table, measure_missing=True, harness=harness, mode="anchored")(TINY)
    assert {table.entry(k)["ms"] for k in table.keys} == {expected_ms}


def test_uniform_width_baseline_meets_the_latency_and_stays_legal(tmp_path):
    latency = formula_latency(TINY, tmp_path)
    target = 0.8 * latency(TINY)
    mult, spec, ms = width_for_latency(TINY, latency, target)
    assert ms <= target and 0.1 < mult < 1.0
    assert residual_pattern(spec) == residual_pattern(TINY)
    assert has_expand_conv(spec) == has_expand_conv(TINY)
    assert spec.last_conv == TINY.last_conv and spec.head_features == TINY.head_features
    assert scale_width(TINY, 1.0) == TINY.resolved()


def test_preselect_keeps_network_order():
    from nas.netadapt.proposals import Proposal

    props = [Proposal("expansion", (i,), 64, after, TINY, ms)
             for i, (after, ms) in enumerate([(56, 9.0), (32, 8.0), (48, 9.5)])]
    # Savings 1.0, 2.0, 0.5 over fractions removed 1/8, 1/2, 1/4: per channel 8, 4, 2.
    assert [p.positions for p in preselect(props, 10.0, 2, "saving_per_channel")] == [(0,), (1,)]
    assert [p.positions for p in preselect(props, 10.0, 2, "saving")] == [(0,), (1,)]
    assert [p.positions for p in preselect(props, 10.0, 1, "saving")] == [(1,)]
    assert preselect(props, 10.0, None) == props


# ---------------------------------------------------------------------------- the pick
def test_paper_rule_maximises_accuracy_change_per_latency_saved():
    current_top1, current_ms = 0.70, 10.0
    results = [
        (0.690, 9.8),   # -0.01 / 0.2 = -0.05
        (0.660, 9.0),   # -0.04 / 1.0 = -0.04   <- paper
        (0.695, 9.9),   # -0.005 / 0.1 = -0.05  <- original NetAdapt (least accuracy lost)
    ]
    assert pick(results, current_top1=current_top1, current_ms=current_ms, rule="paper") == 1
    assert pick(results, current_top1=current_top1, current_ms=current_ms, rule="netadapt") == 2
    # An accuracy gain beats any loss; ties go to the larger saving, then the earlier one.
    assert pick([*results, (0.71, 9.95)], current_top1=0.70, current_ms=10.0) == 3
    assert pick([(0.69, 9.9), (0.68, 9.8)], current_top1=0.70, current_ms=10.0) == 1
    assert pick([(0.69, 9.9), (0.69, 9.9)], current_top1=0.70, current_ms=10.0) == 0


def test_targets_are_checked():
    with pytest.raises(NetAdaptError, match="exactly one"):
        NetAdaptConfig()
    with pytest.raises(NetAdaptError, match="exactly one"):
        NetAdaptConfig(target_ms=5.0, target_fraction=0.5)
    with pytest.raises(NetAdaptError, match=r"\(0, 1\)"):
        NetAdaptConfig(target_fraction=1.5)
    with pytest.raises(NetAdaptError, match="not below the start"):
        NetAdaptConfig(target_ms=12.0).target_for(10.0)
    assert NetAdaptConfig(target_fraction=0.75).target_for(8.0) == pytest.approx(6.0)


# ---------------------------------------------------------------------------- the loop
DATA = DataConfig(name="synthetic", resolution=32, train_samples=64, val_samples=32, batch_size=32)


def tuner() -> FineTuner:
    short = TrainConfig(steps=2, lr=0.01, bn_recalibration_batches=1, progress=False)
    long = TrainConfig(steps=1, lr=0.01, bn_recalibration_batches=1, progress=False)
    return FineTuner(DATA, short, long, selection="holdout")


def start_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY, num_classes=10)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_history(tmp_path):
    latency = formula_latency(TINY, tmp_path)
    cfg = NetAdaptConfig(target_fraction=0.65, delta_fraction=0.06, max_proposals=2)

    whole = netadapt(TINY, start_model(), latency, cfg, tuner(), tmp_path / "whole")
    assert whole.steps >= 2 and whole.latency_ms <= whole.target_ms

    messages: list[str] = []

    def stop_in_step_two(message: str) -> None:
        messages.append(message)
        if message.startswith("step 2 [1/"):
            raise Interrupt  # after the first proposal of step 2 is saved

    with pytest.raises(Interrupt):
        netadapt(TINY, start_model(), latency, cfg, tuner(), tmp_path / "cut", progress=stop_in_step_two)
    assert (tmp_path / "cut" / "steps" / "step0001" / "state.json").is_file()
    assert not (tmp_path / "cut" / "steps" / "step0002" / "state.json").is_file()
    resumed_messages: list[str] = []
    resumed = netadapt(TINY, start_model(), latency, cfg, tuner(), tmp_path / "cut",
                       progress=resumed_messages.append)
    assert resumed_messages[0].startswith("resuming after step 1")
    # The saved proposal of step 2 was not trained again.
    assert not any(m.startswith("step 2 [1/") for m in resumed_messages)

    def table(run: Path) -> pd.DataFrame:
        return pd.read_csv(run / "history.csv").drop(columns=["seconds"])

    pd.testing.assert_frame_equal(table(tmp_path / "whole"), table(tmp_path / "cut"))
    assert resumed.spec == whole.spec and resumed.top1 == whole.top1
    for name in ("history", "plot", "spec", "weights", "summary"):
        assert resumed.paths[name].is_file()
    history = pd.read_csv(tmp_path / "whole" / "history.csv")
    steps = history[history["phase"] == "short_term"]
    assert (steps.groupby("step")["picked"].sum() == 1).all()
    assert not math.isnan(history[history["phase"] == "long_term"]["top1"].iloc[0])


def test_a_used_folder_needs_resume(tmp_path):
    latency = formula_latency(TINY, tmp_path)
    cfg = NetAdaptConfig(target_fraction=0.9, delta_fraction=0.2, max_steps=0)
    netadapt(TINY, start_model(), latency, cfg, tuner(), tmp_path / "run")
    with pytest.raises(NetAdaptError, match="already holds"):
        netadapt(TINY, start_model(), latency, cfg, tuner(), tmp_path / "run", resume=False)
    other = NetAdaptConfig(target_fraction=0.7, delta_fraction=0.2, max_steps=0)
    with pytest.raises(NetAdaptError, match="other settings"):
        netadapt(TINY, start_model(), latency, other, tuner(), tmp_path / "run")
