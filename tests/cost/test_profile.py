from __future__ import annotations

import logging
import warnings

import pytest

from nas.arch.codecs import load_spec
from nas.cost.profile import profile_spec


@pytest.mark.parametrize(
    "name, changes, madds_m, params",
    [
        ("large", {}, 216.6, 5_483_032),
        ("small", {}, 56.5, 2_542_856),
    ],
)
def test_canonical_madds_and_params(name, changes, madds_m, params, caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            prof = profile_spec(load_spec(name).replace(**changes))
    assert round(prof.madds_m, 1) == madds_m
    assert prof.params == params
    assert not [r for r in caplog.records if "nsupported" in r.getMessage()]
    assert prof.elementwise > 0  # h-swish, SE gating, residual adds were counted apart


@pytest.mark.parametrize(
    "name, madds_m, params_m",
    [("large", 155, 3.99), ("small", 44, 2.04)],
)
def test_tf_width_convention_reproduces_paper_table_3(name, madds_m, params_m):
    prof = profile_spec(load_spec(name).replace(width_mult=0.75, width_convention="tf"))
    assert round(prof.params_m, 2) == params_m
    assert abs(prof.madds_m - madds_m) < 1.0


def test_original_last_stage_costs_about_30m_madds_more():
    efficient = profile_spec(load_spec("large"))
    original = profile_spec(load_spec("large").replace(last_stage="original"))
    # Paper Sec. 5.3: the efficient last stage saves 30M MAdds.
    assert 25 < original.madds_m - efficient.madds_m < 40
