"""nas-ablate: the paper's ablation variants as specs, every shipped study, and a whole
(tiny) study run end to end, killed and resumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nas.ablate.study import study_from_dict
from nas.ablate.variants import AblationError, variant_from_dict
from nas.arch.codecs import load_spec, save_spec
from nas.cost.harness import HarnessConfig
from nas.cost.lut import LatencyTable
from nas.cost.profile import profile_spec
from conftest import TINY  # five blocks with every pruning case

STUDIES = Path(__file__).resolve().parents[2] / "nas" / "conf" / "ablation"


def test_table5_variants_place_relu_and_h_swish_as_the_paper_says():
    at_112 = variant_from_dict("x", {"hswish_from": 112}, "large").spec()
    first_112 = [b.out for b in at_112.blocks].index(112)
    assert all(b.activation == "RE" for b in at_112.blocks[:first_112])
    assert all(b.activation == "HS" for b in at_112.blocks[first_112:])
    assert at_112.stem_activation == "RE" and at_112.head_activation == "HS"
    at_16 = variant_from_dict("x", {"hswish_from": 16}, "large").spec()
    assert {b.activation for b in at_16.blocks} == {"HS"} and at_16.stem_activation == "HS"
    relu = variant_from_dict("x", {"activation": "RE"}, "large").spec()
    assert {relu.stem_activation, relu.head_activation} | {b.activation for b in relu.blocks} == {"RE"}
    soft = variant_from_dict("x", {"soft": True}, "small").spec()
    assert "HS" not in {b.activation for b in soft.blocks} and soft.se_gate == "soft"
    assert not any(b.se for b in variant_from_dict("x", {"se": False}, "small").spec().blocks)


@pytest.mark.parametrize("data, message", [
    ({"colour": 1}, "variant x: unknown key(s) ['colour']"),
    ({"set": {"stem": 8}}, "variant x: set: unknown spec field(s) ['stem']"),
    ({"activation": "GELU"}, "variant x: activation must be one of"),
    ({"blocks": {99: {"kernel": 3}}}, "variant x: blocks: row 99 does not exist"),
    ({"hswish_from": 7}, "variant x: hswish_from: no layer has 7 output channels"),
    ({"paper": {"fps": 3}}, "variant x: paper: unknown figure(s) ['fps']"),
])
def test_a_malformed_variant_is_named(data, message):
    with pytest.raises(AblationError) as caught:
        variant_from_dict("x", data, "large").spec()
    assert message in str(caught.value)


def _study(name: str):
    return study_from_dict(yaml.safe_load((STUDIES / f"{name}.yaml").read_text()))


def test_every_shipped_study_builds_its_networks():
    names = sorted(p.stem for p in STUDIES.glob("*.yaml"))
    assert len(names) >= 10
    for name in names:
        study = _study(name)
        assert study.baseline in {v.name for v in study.variants}
        for variant in study.variants:
            variant.spec()  # valid, or the study is broken


def _madds_params(study, variant):
    profile = profile_spec(next(v for v in study.variants if v.name == variant).spec())
    return profile.madds / 1e6, profile.params / 1e6


def test_madds_deltas_match_the_papers_where_its_figure_holds():
    stem = _study("stem")
    delta = _madds_params(stem, "stem32_hswish")[0] - _madds_params(stem, "stem16_hswish")[0]
    assert delta == pytest.approx(10, rel=0.05)  # paper: 10M saved by the 16-filter stem
    # The original last stage (paper Fig. 5, top) costs 34.3M more: exactly what the figure's
    # layers add up to at 7x7 (expand 7.5M + depthwise 0.4M + project 15.1M + 1x1 20.1M, less
    # the efficient stage's pooled 1x1 1.2M); the paper's text rounds it to 30M (docs/results/ablations.md).
    last = _study("last_stage")
    delta = _madds_params(last, "original")[0] - _madds_params(last, "efficient")[0]
    assert delta == pytest.approx(34.32, abs=0.05)


# Rows whose paper figure our networks do not reproduce, with what they give instead (docs/results/ablations.md
# says why): the paper's two x1.25 rows need different head conventions, and
# Small x0.35's 12M MAdds is not what TF-slim's rules give.
NOT_REPRODUCED = {("multipliers_large", "x1.25", "params_m"): 8.256,
                  ("multipliers_small", "x1.25_finegrain", "params_m"): 3.205,
                  ("multipliers_small", "x0.35", "madds_m"): 12.80}


@pytest.mark.parametrize("name", ["multipliers_large", "multipliers_small", "resolution_large",
                                  "resolution_small"])
def test_multiplier_and_resolution_rows_match_the_appendix(name):
    """Within 2% on MAdds and 5% on params, except the rows listed (each checked as listed)."""
    study = _study(name)
    for variant in study.variants:
        ours = dict(zip(("madds_m", "params_m"), _madds_params(study, variant.name)))
        for figure, tolerance in (("madds_m", 0.02), ("params_m", 0.05)):
            if figure not in variant.paper:
                continue
            known = NOT_REPRODUCED.get((name, variant.name, figure))
            if known is not None:
                assert ours[figure] == pytest.approx(known, abs=0.01)
                assert ours[figure] != pytest.approx(variant.paper[figure], rel=tolerance)
            else:
                assert ours[figure] == pytest.approx(variant.paper[figure], rel=tolerance), variant.name


# ---------------------------------------------------------------------------- end to end
def _tiny_study(tmp_path: Path) -> Path:
    spec = TINY.replace(resolution=32)
    base = save_spec(spec, tmp_path / "tiny.yaml")
    table = LatencyTable.create(HarnessConfig(repeats=3, min_run_time=0.0, warmup=1, warmup_time=0.0,
                                              passes=1, max_run_time=0.05), resolution=32)
    table.build(spec, progress=False, save_to=tmp_path / "table")
    protocol = tmp_path / "tiny_protocol.yaml"
    protocol.write_text(yaml.safe_dump({
        "data": {"name": "synthetic", "resolution": 32, "num_classes": 10, "train_samples": 64,
                 "val_samples": 32, "batch_size": 32, "seed": 0},
        "train": {"epochs": 1, "lr": 0.05, "eval_every": 0, "bn_recalibration_batches": 1}}))
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "base": str(base), "baseline": "base",
        "variants": {"base": {"paper": {"top1": 75.2, "ms": 51.4}},
                     "relu": {"activation": "RE"},
                     "unfused": {"set": {"hswish": "decomposed"}}},
        "latency": {"table": str(tmp_path / "table"), "backend": None, "rounds": 2},
        "accuracy": {"protocol": str(protocol), "seeds": [0, 1]}}))
    return tmp_path


def _ablate(root: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli.ablate", f"hydra.searchpath=[file://{root}]",
                           "ablation=tiny", "progress=false", f"hydra.run.dir={run}", *extra],
                          capture_output=True, text=True, timeout=600)


def test_a_study_runs_end_to_end_and_a_second_start_measures_nothing_again(tmp_path: Path):
    root = _tiny_study(tmp_path)
    run = tmp_path / "run"
    first = _ablate(root, run)
    assert first.returncode == 0, first.stderr[-3000:]
    frame = pd.read_csv(run / "ablation.csv")
    assert list(frame["variant"]) == ["base", "relu", "unfused"]
    assert (frame["table_ms"] > 0).all() and (frame["e2e_ms"] > 0).all()
    assert frame.loc[0, "e2e_ratio"] == 1.0 and (frame["seeds"] == 2).all()
    # fused and decomposed h-swish are one function: trained once, the same accuracy
    assert frame.loc[0, "top1_mean"] == frame.loc[2, "top1_mean"]
    assert frame.loc[2, "madds_m"] == frame.loc[0, "madds_m"]
    assert frame.loc[1, "accuracy_verdict"] in ("better", "worse") or \
        frame.loc[1, "accuracy_verdict"].startswith("tie")
    text = (run / "ablation.md").read_text()
    table_rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len({line.count("|") for line in table_rows}) == 1  # no cell breaks the table
    assert "| base |" in text and "51.4" in text and (run / "ablation.png").stat().st_size > 0
    assert "on `synthetic` val, seeds [0, 1]" in text  # the protocol's own data set, not a fixed name
    assert load_spec(run / "specs" / "relu.yaml").stem_activation == "RE"
    records = (run / "results.jsonl").read_text().splitlines()
    kinds = [json.loads(r)["kind"] for r in records]
    assert kinds.count("top1") == 4 and kinds.count("e2e") == 1  # 2 architectures x 2 seeds

    # A start killed after some figures (here: the last record lost) goes on from there.
    (run / "results.jsonl").write_text("\n".join(records[:-1]) + "\n")
    again = _ablate(root, run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len((run / "results.jsonl").read_text().splitlines()) == len(records)

    # The same folder with another latency source is refused, not mixed.
    other = _ablate(root, run, "ablation.latency.table=cpu-torch-1t-b1-224")
    assert other.returncode == 2 and "start a new run folder" in other.stderr


def test_a_study_without_a_table_times_its_variants_end_to_end_in_the_backend(tmp_path: Path):
    root = _tiny_study(tmp_path)
    run = tmp_path / "run"
    result = _ablate(root, run, "ablation.latency.table=none", "ablation.latency.backend=onnxruntime",
                     "ablation.accuracy.seeds=[]")
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pd.read_csv(run / "ablation.csv")
    assert frame["table_ms"].isna().all() and (frame["e2e_ms"] > 0).all()
    assert frame.loc[0, "e2e_ratio"] == 1.0
    records = [json.loads(r) for r in (run / "results.jsonl").read_text().splitlines()]
    source = next(r for r in records if r["kind"] == "table_source")
    assert source["table"] == "none" and source["runtime"] == "onnxruntime"
    assert not (run / "latency_table").exists()  # nothing was built
    assert "Accuracy: not trained (accuracy.seeds is empty)" in (run / "ablation.md").read_text()


@pytest.mark.parametrize("override, message", [
    ("ablation.baseline=nope", "ablation tiny: baseline 'nope' is not one of"),
    ("ablation.latency.table=none ablation.latency.rounds=0", "latency.rounds must be at least 1"),
    ("ablation.accuracy.seeds=0", "accuracy.seeds must be a list of seeds"),
    ("ablation.accuracy.seeds=[0,-1]", "accuracy.seeds must be an integer >= 0"),
])
def test_a_bad_study_ends_with_one_line(tmp_path: Path, override: str, message: str):
    root = _tiny_study(tmp_path)
    result = _ablate(root, tmp_path / "run", *override.split())
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nas-ablate: error: ") and message in last, last
