from __future__ import annotations

import pytest
import torch
import torchvision

from nas.arch.codecs import load_spec
from nas.models.builder import build_model

TORCHVISION = {
    "large": (torchvision.models.mobilenet_v3_large, {}, 5_483_032),
    "small": (torchvision.models.mobilenet_v3_small, {}, 2_542_856),
    "large_reduced_tail": (torchvision.models.mobilenet_v3_large, {"reduced_tail": True}, None),
    "small_reduced_tail": (torchvision.models.mobilenet_v3_small, {"reduced_tail": True}, None),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_matches_torchvision(name):
    factory, kwargs, params = TORCHVISION[name]
    torch.manual_seed(0)
    reference = factory(**kwargs).eval()
    ours = build_model(load_spec(name)).eval()
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    assert all(our_state[k].shape == ref_state[k].shape for k in ref_state)
    if params is not None:
        assert sum(p.numel() for p in ours.parameters()) == params
    # Non-trivial BN statistics so that the comparison exercises every layer.
    with torch.no_grad():
        for key, value in ref_state.items():
            if key.endswith("running_mean"):
                value.uniform_(-0.1, 0.1)
            elif key.endswith("running_var"):
                value.uniform_(0.5, 1.5)
    ours.load_state_dict(ref_state)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert expected.abs().max() > 0
    assert (actual - expected).abs().max().item() <= 1e-5


def test_width_multiplier_matches_torchvision():
    reference = torchvision.models.mobilenet_v3_large(width_mult=0.75)
    ours = build_model(load_spec("large").replace(width_mult=0.75))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


@pytest.mark.parametrize(
    "name, changes",
    [
        ("large", {"last_stage": "original"}),
        ("large_minimal", {}),
        ("small_minimal", {}),
        ("small", {"width_mult": 0.5, "width_convention": "tf", "num_classes": 10, "resolution": 96}),
    ],
)
def test_variants_build_and_run(name, changes):
    spec = load_spec(name).replace(**changes)
    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, spec.resolution, spec.resolution))
    assert out.shape == (1, spec.num_classes)


def test_original_last_stage_has_the_extra_layers():
    efficient = build_model(load_spec("large"))
    original = build_model(load_spec("large").replace(last_stage="original"))
    assert len(original.features) == len(efficient.features) + 1
    # Fig. 5: the original stage projects to 320 before the 1280 conv.
    assert original.features[-1][0].in_channels == 320


def test_dilated_blocks_keep_resolution():
    large = load_spec("large")
    dilated = large.with_blocks([b.replace(dilation=2) if i >= 12 else b for i, b in enumerate(large.blocks)])
    reference = torchvision.models.mobilenet_v3_large(dilated=True)
    ours = build_model(dilated)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert ours.features(x).shape == reference.features(x).shape == (1, 960, 14, 14)


def test_num_classes_override():
    model = build_model(load_spec("small"), num_classes=7)
    assert model.classifier[-1].out_features == 7


def test_minimal_network_with_relu_head_trains():
    model = build_model(load_spec("small_minimal").replace(num_classes=3)).train()
    loss = model(torch.randn(2, 3, 64, 64)).sum()
    loss.backward()  # an in-place dropout after the in-place ReLU head would raise here
    assert model.classifier[0].weight.grad is not None


def test_the_bneck_parts_are_named():
    """expand / depthwise / se / project reach the layers of torchvision's positional layout."""
    from torchvision.ops import SqueezeExcitation

    from nas.arch.spec import BlockSpec
    from nas.models.builder import Bneck

    full = Bneck(16, BlockSpec(5, 72, 24, True, "HS", 2))
    assert [full.expand, full.depthwise, full.se, full.project] == list(full.block)
    assert isinstance(full.se, SqueezeExcitation) and full.depthwise[0].groups == 72
    bare = Bneck(16, BlockSpec(3, 16, 16, False, "RE", 1))  # no expand conv, no SE
    assert bare.expand is None and bare.se is None
    assert [bare.depthwise, bare.project] == list(bare.block)
    assert not any(name.startswith(("expand", "depthwise", "se.", "project")) for name in full.state_dict())


def test_layers_are_injectable_as_in_torchvision_and_timm():
    """A builder's norm, activation and SE come from factories: swap one, same architecture."""
    import torch
    from torch import nn

    from nas.arch.codecs import load_spec
    from nas.models.builder import Layers, build_model

    spec = load_spec("small").replace(resolution=32, num_classes=10)
    model = build_model(spec, factories=Layers(norm=lambda c: nn.GroupNorm(1, c)))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) > 20
    default = build_model(spec)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in default.parameters())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
