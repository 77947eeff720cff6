from __future__ import annotations

import random
from pathlib import Path

import pytest

from nas.arch.codecs import (
    CANONICAL_NAMES,
    block_from_string,
    block_to_string,
    from_string,
    from_yaml,
    load_spec,
    save_spec,
    to_string,
    to_yaml,
)
from nas.arch.convert import from_timm, from_torchvision, to_timm, to_torchvision
from nas.arch.spec import SpecError
from nas.arch.space import load_space

# timm's own arch_def for mobilenetv3_large_100 (timm/models/mobilenetv3.py).
TIMM_LARGE = [
    ["ds_r1_k3_s1_e1_c16_nre"],
    ["ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"],
    ["ir_r3_k5_s2_e3_c40_se0.25_nre"],
    ["ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"],
    ["ir_r2_k3_s1_e6_c112_se0.25"],
    ["ir_r3_k5_s2_e6_c160_se0.25"],
    ["cn_r1_k1_s1_c960"],
]


def _random_specs(n: int = 20):
    rng = random.Random(0)
    specs = []
    for name in ("mobilenetv3_large", "mobilenetv3_small"):
        space = load_space(name)
        specs += [space.sample(rng) for _ in range(n // 2)]
    return specs


@pytest.mark.parametrize("name", sorted(CANONICAL_NAMES))
def test_canonical_configs_round_trip(name):
    spec = load_spec(name)
    assert from_yaml(to_yaml(spec)) == spec
    assert from_string(to_string(spec)) == spec


def test_random_and_varied_specs_round_trip():
    large = load_spec("large")
    variants = _random_specs() + [
        large.replace(width_mult=0.75, width_convention="tf", dropout=0.1, num_classes=10),
        large.replace(last_stage="original", resolution=192, stem_activation="RE"),
        large.with_blocks([b.replace(dilation=2) if i > 12 else b for i, b in enumerate(large.blocks)]),
    ]
    for spec in variants:
        assert from_yaml(to_yaml(spec)) == spec
        assert from_string(to_string(spec)) == spec
        for block in spec.blocks:
            assert block_from_string(block_to_string(block)) == block


def test_yaml_reads_like_the_paper_table():
    text = to_yaml(load_spec("large"))
    assert "  - [5,  72,  40, SE, RE, 2]" in text
    assert "  - [3, 200,  80,  -, HS, 1]" in text


def test_save_and_load_file(tmp_path: Path):
    spec = load_spec("small").replace(num_classes=10)
    path = save_spec(spec, tmp_path / "net.yaml")
    assert load_spec(path) == spec


def test_timm_reads_timm_large_arch_def():
    assert from_timm(TIMM_LARGE) == load_spec("large")


@pytest.mark.parametrize("name", ["large", "small", "large_minimal", "small_reduced_tail"])
def test_timm_round_trip(name):
    spec = load_spec(name)
    assert from_timm(**to_timm(spec)) == spec


def test_torchvision_rows_round_trip_and_match_torchvision():
    from torchvision.models.mobilenetv3 import _mobilenet_v3_conf

    for name, tv_name in [("large", "mobilenet_v3_large"), ("small", "mobilenet_v3_small")]:
        spec = load_spec(name)
        text = to_torchvision(spec)
        assert from_torchvision(text) == spec
        setting, last_channel = _mobilenet_v3_conf(tv_name)
        rows = [
            (c.input_channels, c.kernel, c.expanded_channels, c.out_channels, c.use_se,
             "HS" if c.use_hs else "RE", c.stride, c.dilation)
            for c in setting
        ]
        ours = [
            (ctx.in_channels, ctx.block.kernel, ctx.block.expansion, ctx.block.out, ctx.block.se,
             ctx.block.activation, ctx.block.stride, ctx.block.dilation)
            for ctx in spec.contexts()
        ]
        assert ours == rows and last_channel == spec.head_features


def test_torchvision_notes_what_it_cannot_express():
    text = to_torchvision(load_spec("large_minimal"))
    assert "# NOTE: stem_activation is RE" in text


# ------------------------------------------------------------------ errors
GOOD = """\
resolution: 224
num_classes: 10
stem: {channels: 16, activation: HS}
bneck:
  - [3, 16, 16, -, RE, 1]
  - [5, 72, 24, SE, HS, 2]
head: {last_conv: 144, features: 256, activation: HS, last_stage: efficient, dropout: 0.2}
"""


def test_good_config_parses():
    spec = from_yaml(GOOD, "net.yaml")
    assert spec.blocks[1].se and spec.blocks[1].activation == "HS"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("[5, 72, 24, SE, HS, 2]", "[5, 72, 24, SE, HS, 3]", r"net.yaml: bneck row 2: field 'stride'"),
        ("[5, 72, 24, SE, HS, 2]", "[5, 0, 24, SE, HS, 2]", r"net.yaml: bneck row 2: field 'expansion'"),
        ("[3, 16, 16, -, RE, 1]", "[3, 16, 16, -, swish, 1]", r"bneck row 1: field 'activation'.*swish"),
        ("[3, 16, 16, -, RE, 1]", "[3, 16, 16, -, RE]", r"bneck row 1: expected 6 or 7 entries.*got 5"),
        ("[3, 16, 16, -, RE, 1]", "[3, 16, 16, maybe, RE, 1]", r"bneck row 1: field 'se'"),
        ("num_classes: 10\n", "", r"net.yaml: missing field\(s\) \['num_classes'\]"),
        ("dropout: 0.2", "dropout: 0.2, colour: red", r"'head' has unknown field\(s\) \['colour'\]"),
        ("features: 256, ", "", r"'head' is missing field\(s\) \['features'\]"),
        ("stem: {", "stem: [", r"not valid YAML"),
    ],
)
def test_bad_configs_name_file_row_and_field(old, new, message):
    assert old in GOOD
    with pytest.raises(SpecError, match=message):
        from_yaml(GOOD.replace(old, new), "net.yaml")


def test_non_mapping_and_unknown_name():
    with pytest.raises(SpecError, match="must be a mapping"):
        from_yaml("- just a list\n", "x.yaml")
    with pytest.raises(SpecError, match="not a canonical name"):
        load_spec("medium")


def test_string_errors():
    with pytest.raises(SpecError, match="block 1"):
        block_from_string("k3_e16_c16_s3_re")
    with pytest.raises(SpecError, match="stem part"):
        from_string("x|k3_e16_c16_s1_re|head960_1280_hs_efficient|drop0.2|cls1000|res224|w1.0_tv")
