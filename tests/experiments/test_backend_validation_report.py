"""The backend validation's figures once the calibration is measured again beside the held-out
networks: the table and MAdds refitted on the same networks, reported beside the stored
calibration's figures."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from experiments import backend_validation
from nas.arch.codecs import to_string
from nas.arch.space import load_space
from nas.cost.calibrate import sample_specs
from nas.cost.validate import error_metrics


def test_recalibrated_figures_refit_madds_on_the_networks_measured_now(monkeypatch):
    space = load_space("mobilenetv3_small")
    held_out, calibration = sample_specs(space, 4, 0), sample_specs(space, 3, 1000)

    def madds(spec):  # a stand-in for fvcore's count (seconds a network at 224 px)
        return float(sum(b.expansion * b.kernel ** 2 for b in spec.blocks))

    monkeypatch.setattr(backend_validation, "profile_spec", lambda spec: SimpleNamespace(madds_m=madds(spec)))
    # Times exactly linear in MAdds: the refitted MAdds line predicts every network.
    measured = [0.02 * madds(s) + 0.5 for s in held_out]
    predicted = [m * 1.2 for m in measured]  # the refitted table 20% off throughout
    recal = {**error_metrics(predicted, measured), "a": 1.0, "b": 0.0, "n_calibration": 3,
             "specs": [to_string(s) for s in calibration],
             "measured_ms": [0.02 * madds(s) + 0.5 for s in calibration]}
    figures = backend_validation.recalibrated_figures(SimpleNamespace(metrics_recalibrated=recal),
                                                      held_out, measured, table=None)
    assert figures["madds"]["within_10_pct"] == 100.0 and figures["madds"]["mape_pct"] == pytest.approx(0, abs=1e-6)
    assert figures["table"]["within_10_pct"] == 0.0 and figures["table"]["n_calibration"] == 3
    assert figures["targets_met"] == {"within_10_pct": False, "tau_above_madds": False}

    entry = {"backend": "openvino", "space": space.name, "n": 4,
             "table_prediction": {"within_10_pct": 50.0, "kendall_tau": 0.7, "mape_pct": 9.0},
             "madds_prediction": {"within_10_pct": 40.0, "kendall_tau": 0.6},
             "measurement_split_half_tau": 0.8, "measurement_split_half_within_10_pct": 62.5,
             "recalibrated_now": figures,
             "measurement": {"rounds": 12, "loadavg_start": [1.0], "loadavg_end": [1.1],
                             "statistic": "min over all samples of all rounds"},
             "host": {"cpu": "AMD EPYC"}}
    row = backend_validation.markdown({"openvino/x": entry, "plain": {**entry, "recalibrated_now": None}})
    assert "| 0.0%, " in row[4] and "(1.000; 3 networks)" in row[4]
    assert "| - |" in row[5]  # a row measured without --recalibrate
    assert "| 0.800 | 62.5% |" in row[4]  # split-half tau and +-10% share side by side
    assert row[-2] == "Measured figure: min over all samples of all rounds"
    # An anchored row says so in its rounds, and the footer names both figures.
    anchored = {**entry, "measurement": {**entry["measurement"], "anchor": "stem16_hs|...",
                                         "statistic": backend_validation.ANCHORED_STATISTIC_TEXT}}
    both = backend_validation.markdown({"openvino/x": entry, "openvino/x+anchored": anchored})
    assert "| 12 anchored |" in both[5] and "| 12 anchored |" not in both[4]
    assert both[-2].startswith("Measured figure: min over all samples") and "rounds marked anchored" in both[-2]


def test_a_pair_recorded_before_the_split_half_share_gets_it_from_its_csv(tmp_path):
    import pandas as pd

    # Two networks: halves (even rounds' minimum, odd rounds' minimum) 1.0/1.02 and 1.0/1.3.
    pd.DataFrame({"rounds_ms": ["1.1 1.2 1.1 1.2", "1.1 1.5 1.1 1.5"],
                  "rounds_min_ms": ["1.0 1.02 1.1 1.05", "1.0 1.3 1.2 1.4"]}).to_csv(
        tmp_path / "openvino_mobilenetv3_small_amd-epyc.csv", index=False)
    old = {"measurement": {"statistic": "min over all samples of all rounds"}}
    summary = backend_validation.with_split_half_within(
        {"openvino/mobilenetv3_small@amd-epyc": dict(old), "litert/mobilenetv3_small@amd-epyc": dict(old),
         "onnxruntime/mobilenetv3_small@amd-epyc": {**old, "measurement_split_half_within_10_pct": 90.0}},
        tmp_path)
    assert summary["openvino/mobilenetv3_small@amd-epyc"]["measurement_split_half_within_10_pct"] == 50.0
    assert math.isnan(summary["litert/mobilenetv3_small@amd-epyc"]["measurement_split_half_within_10_pct"])
    assert summary["onnxruntime/mobilenetv3_small@amd-epyc"]["measurement_split_half_within_10_pct"] == 90.0
    # A statistic the harness does not know is named, not guessed.
    with pytest.raises(SystemExit, match=r"'openvino/x': measurement statistic 'mode of rounds' is none of"):
        backend_validation.with_split_half_within({"openvino/x": {"measurement": {"statistic": "mode of rounds"}}},
                                                  tmp_path)
