"""The ablation variants as specs (paper Sec. 5.2-5.3, Table 5): ReLU6 and swish activations,
the SE ratio and gate, fused versus decomposed h-swish, through codecs, builder, keys,
profiling and the timm/torchvision conversions."""

from __future__ import annotations

import pytest
import torch

from nas.arch.codecs import from_string, from_yaml, load_spec, to_string, to_yaml
from nas.arch.convert import from_timm, to_timm, to_torchvision
from nas.arch.spec import DEFAULT_OPTIONS, SpecError, squeeze_channels
from nas.cost.keys import build_op, keys_for_spec, parse_key
from nas.cost.lut import LatencyTable
from nas.cost.profile import profile_spec
from nas.cost.table_files import SHIPPED_TABLES_DIR
from nas.models.builder import DecomposedHardswish, build_model

SMALL = load_spec("small")


def _variant(**ops):
    blocks = tuple(b.replace(activation="R6") if i < 2 else b for i, b in enumerate(SMALL.blocks))
    return SMALL.replace(blocks=blocks, stem_activation="SW", **ops)


def test_the_paper_networks_are_written_and_keyed_as_before():
    assert SMALL.options == DEFAULT_OPTIONS
    assert "ops" not in to_yaml(SMALL) and "ops" not in to_string(SMALL)
    shipped = LatencyTable.load(SHIPPED_TABLES_DIR / "cpu-torch-1t-b1-224")
    assert shipped.missing_keys([SMALL, load_spec("large")]) == []
    # The canonical widths: int(e * 0.25) == e // 4 for every expansion.
    assert all(squeeze_channels(e) == squeeze_channels(e, 0.25) for e in range(8, 1000))


@pytest.mark.parametrize("ops", [{}, {"se_ratio": 0.5}, {"se_gate": "soft"},
                                 {"hswish": "decomposed"},
                                 {"se_ratio": 0.125, "se_gate": "soft", "hswish": "decomposed"}])
def test_every_variant_round_trips_through_yaml_and_the_one_line_form(ops):
    spec = _variant(**ops)
    assert from_yaml(to_yaml(spec)) == spec
    assert from_string(to_string(spec)) == spec
    for key in keys_for_spec(spec):
        fields = parse_key(key)
        if fields.op == "bneck" and fields.se:
            assert (fields.options.se_ratio, fields.options.se_gate) == (spec.se_ratio, spec.se_gate)
        if fields.act == "HS":
            assert fields.options.hswish == spec.hswish


def test_decomposed_h_swish_is_the_same_function_built_from_other_ops():
    fused, decomposed = SMALL, SMALL.replace(hswish="decomposed")
    torch.manual_seed(0)
    a = build_model(fused).eval()
    b = build_model(decomposed).eval()
    b.load_state_dict(a.state_dict())  # same parameters: only the activation modules differ
    assert any(isinstance(m, DecomposedHardswish) for m in b.modules())
    assert not any(isinstance(m, torch.nn.Hardswish) for m in b.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)
    # Only the h-swish ops are keyed apart (Table 5 times them separately).
    changed = [(k1, k2) for k1, k2 in zip(keys_for_spec(fused), keys_for_spec(decomposed)) if k1 != k2]
    assert changed and all(k2.endswith(("_hsd", "_hsd_d2")) for _, k2 in changed)
    module, _ = build_op(changed[0][1])
    assert any(isinstance(m, DecomposedHardswish) for m in module.modules())


def test_the_se_ratio_and_gate_change_the_built_network():
    wide = SMALL.replace(se_ratio=0.5, se_gate="soft")
    model = build_model(wide)
    se_modules = [m for m in model.modules() if m.__class__.__name__ == "SqueezeExcitation"]
    assert se_modules and all(isinstance(m.scale_activation, torch.nn.Sigmoid) for m in se_modules)
    expected = [squeeze_channels(b.expansion, 0.5) for b in SMALL.blocks if b.se]
    assert [m.fc1.out_channels for m in se_modules] == expected
    params = sum(p.numel() for p in model.parameters())
    assert profile_spec(wide).params == params > profile_spec(SMALL).params


def test_relu6_and_swish_are_built():
    model = build_model(_variant())
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.ReLU6 in kinds and torch.nn.SiLU in kinds


@pytest.mark.parametrize("change, message", [
    ({"se_ratio": 0}, "se_ratio"), ({"se_ratio": 1.5}, "se_ratio"),
    ({"se_gate": "medium"}, "['hard', 'soft']"), ({"hswish": "fast"}, "['fused', 'decomposed']"),
    ({"stem_activation": "GELU"}, "'stem_activation' must be one of ['RE', 'HS', 'R6', 'SW']"),
])
def test_bad_option_values_are_named(change, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SMALL.replace(**change)


def test_bad_ops_in_yaml_and_strings_are_named():
    text = to_yaml(SMALL.replace(se_ratio=0.5))
    with pytest.raises(SpecError, match=r"'ops' has unknown field\(s\) \['gate'\]"):
        from_yaml(text.replace("se_gate:", "gate:"))
    partial = from_yaml(to_yaml(SMALL) + "ops: {se_gate: soft}\n")  # the rest: the paper's
    assert (partial.se_gate, partial.se_ratio, partial.hswish) == ("soft", 0.25, "fused")
    with pytest.raises(SpecError, match="ops0.25_hard_fused"):
        from_string(to_string(SMALL) + "|ops0.5_medium_fused")


def test_timm_carries_activations_and_the_se_ratio_torchvision_refuses_what_it_lacks():
    spec = _variant(se_ratio=0.5).replace(stem_activation="HS")
    timm = to_timm(spec)
    assert any("_se0.5_" in code for stage in timm["arch_def"] for code in stage)
    assert any(code.endswith("_nr6") for stage in timm["arch_def"] for code in stage)
    back = from_timm(timm["arch_def"], stem_size=timm["stem_size"], num_features=timm["num_features"],
                     act_layer=timm["act_layer"], num_classes=timm["num_classes"],
                     drop_rate=timm["drop_rate"])
    assert back.se_ratio == 0.5 and back.blocks == spec.blocks
    with pytest.raises(SpecError, match="se_gate 'soft'"):
        to_timm(SMALL.replace(se_gate="soft"))
    with pytest.raises(SpecError, match="bneck row 1: .* RE or HS, not R6"):
        to_torchvision(spec)
    with pytest.raises(SpecError, match="fixes se_ratio 0.25"):
        to_torchvision(SMALL.replace(se_ratio=0.5))


def test_the_variants_export_to_onnx_as_their_own_ops(tmp_path):
    """ReLU6 and swish layers, the sigmoid gate and the decomposed h-swish reach onnxruntime
    with the same outputs; only the fused spec has HardSwish nodes."""
    from nas.models.export import compare_with_onnxruntime, export_module, onnx_op_counts

    x = torch.randn(1, 3, 64, 64)
    fused = SMALL
    variant = _variant(se_gate="soft", hswish="decomposed")
    for spec, name in ((fused, "fused"), (variant, "variant")):
        model = build_model(spec).eval()
        path = export_module(model, x, tmp_path / f"{name}.onnx", exporter="torchscript")
        assert compare_with_onnxruntime(model, path, x) < 1e-4
        counts = onnx_op_counts(path)
        if spec is fused:
            assert counts["HardSwish"] > 0
        else:
            assert counts["HardSwish"] == 0 and counts["Sigmoid"] > 0 and counts["Clip"] > 0
