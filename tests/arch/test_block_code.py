"""The one block grammar: the network string and the latency keys read and write it alike."""

from __future__ import annotations

import dataclasses

import pytest

from nas.arch.block_code import format_block, parse_block
from nas.arch.codecs import block_from_string, block_to_string
from nas.arch.spec import DEFAULT_OPTIONS, BlockSpec, SpecError
from nas.cost.keys import BadKeyError, bneck_key, parse_key

BLOCK = BlockSpec(kernel=5, expansion=72, out=40, se=True, activation="HS", stride=2, dilation=2)
OPTIONS = dataclasses.replace(DEFAULT_OPTIONS, se_ratio=0.5, se_gate="soft", hswish="decomposed")


def test_a_block_and_its_options_round_trip():
    assert format_block(BLOCK) == "k5_e72_c40_s2_se_hs_d2"
    assert format_block(BLOCK, OPTIONS) == "k5_e72_c40_s2_se0p5sig_hsd_d2"
    assert parse_block(format_block(BLOCK, OPTIONS)) == (BLOCK, OPTIONS)
    assert parse_block(format_block(BLOCK)) == (BLOCK, DEFAULT_OPTIONS)


def test_the_network_string_and_the_key_share_the_block_part():
    key = bneck_key(56, 24, BLOCK, OPTIONS)
    assert key == "bneck_r56_i24_" + format_block(BLOCK, OPTIONS)
    fields = parse_key(key)
    assert (fields.kernel, fields.exp, fields.out, fields.dilation, fields.options) == (5, 72, 40, 2, OPTIONS)
    assert block_from_string(block_to_string(BLOCK)) == BLOCK


def test_bad_codes_are_named():
    with pytest.raises(SpecError, match="block 3: cannot parse 'k5_e72_s2_re'"):
        block_from_string("k5_e72_s2_re", 2)
    with pytest.raises(SpecError, match="ops part"):  # a network's options are given once
        block_from_string("k5_e72_c40_s2_se0p5_re")
    with pytest.raises(BadKeyError, match="is not a latency key: its block part"):
        parse_key("bneck_r56_i24_k5_eX_c40_s2_re")
    with pytest.raises(BadKeyError, match="write the SE part as '_se'"):
        parse_key("bneck_r56_i24_k5_e72_c40_s2_se0p25_re")
