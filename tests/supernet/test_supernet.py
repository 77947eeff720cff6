"""The weight-sharing supernet: every spec runs, extraction is exact, channel sorting is safe."""

from __future__ import annotations

import random
from typing import Any, Callable

import pytest
import torch
from torch import nn

from nas.arch.spec import BlockSpec, NetworkSpec
from nas.models.bn import recalibrate_bn
from nas.models.builder import MobileNetV3Net
from nas.arch.space import SearchSpace, StageSpace, load_space
from nas.supernet.dynamic_ops import DynamicDepthwise
from nas.supernet.dynamic_ops import SupernetError
from nas.supernet.network import Supernet

SPACES = ("mobilenetv3_small", "mobilenetv3_large")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


class PickTrial:
    """Answers each ``suggest_categorical`` with ``pick(name, choices)``."""

    def __init__(self, pick: Callable[[str, list[Any]], Any]) -> None:
        self.pick = pick

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.pick(name, list(choices))


def spec_of(space: SearchSpace, pick: Callable[[str, list[Any]], Any]) -> NetworkSpec:
    return space.suggest(PickTrial(pick))


def coverage_specs(space: SearchSpace) -> list[NetworkSpec]:
    """Specs covering min/max depth, SE on/off, kernels 3/5/7, RE/HS and expansion == input."""

    def extreme(largest: bool) -> Callable[[str, list[Any]], Any]:
        def pick(name: str, choices: list[Any]) -> Any:
            if name.endswith("_activation"):
                return "HS" if largest else "RE"
            if name.endswith("_se"):
                return largest
            return max(choices) if largest else min(choices)
        return pick

    def kernel5_mixed(name: str, choices: list[Any]) -> Any:
        # Depth 0 offsets, kernel 5, alternate SE/activation by block, middle expansion.
        if name.endswith("_depth"):
            return 0
        if name.endswith("_kernel"):
            return 5
        if name.endswith("_expansion"):
            return choices[len(choices) // 2]
        block = int(name.split("_b")[1].split("_")[0])
        if name.endswith("_se"):
            return block % 2 == 0
        return "HS" if block % 2 else "RE"

    rng = random.Random(7)
    specs = [spec_of(space, extreme(False)), spec_of(space, extreme(True)),
             spec_of(space, kernel5_mixed)]
    specs += [space.sample(rng) for _ in range(3)]
    return specs


def randomise(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and a classifier that gives logits of order one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.2)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def tiny_space() -> SearchSpace:
    """Two stages: s1 may skip the expansion conv (e == in == 8), s2 varies depth 1-3."""
    base = NetworkSpec(
        blocks=(BlockSpec(3, 8, 8, True, "RE", 2), BlockSpec(3, 32, 16, False, "HS", 2),
                BlockSpec(3, 32, 16, False, "HS", 1)),
        stem_channels=8, last_conv=32, head_features=64, num_classes=4, resolution=32)
    return SearchSpace(
        name="tiny", base=base,
        stages=(StageSpace(out=8, stride=2, blocks=1, expansions=(8, 16)),
                StageSpace(out=16, stride=2, blocks=2, expansions=(32, 48), depth_offsets=(-1, 0, 1))),
        kernels=(3, 5, 7), se=(False, True), activations=("RE", "HS"))


@pytest.mark.parametrize("name", SPACES)
def test_every_random_spec_runs_with_the_right_shape(name: str) -> None:
    space = load_space(name)
    torch.manual_seed(0)
    net = Supernet(space, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    rng = random.Random(0)
    specs = [net.largest_spec(), net.smallest_spec(), space.base] + [space.sample(rng) for _ in range(6)]
    with torch.no_grad():
        for spec in specs:
            net.set_active(spec)
            out = net(x)
            assert out.shape == (2, 5)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SPACES)
def test_extracted_model_matches_the_supernet(name: str) -> None:
    space = load_space(name)
    torch.manual_seed(0)
    net = Supernet(space, num_classes=5)
    randomise(net)
    calibration = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    x = torch.randn(3, 3, 32, 32)
    specs = coverage_specs(space)
    kernels = {b.kernel for s in specs for b in s.blocks}
    assert kernels == {3, 5, 7}
    assert {b.se for s in specs for b in s.blocks} == {False, True}
    assert {b.activation for s in specs for b in s.blocks} == {"RE", "HS"}
    assert len({len(s.blocks) for s in specs}) >= 2
    assert any(s.blocks[0].expansion == space.base.stem_channels for s in specs)
    for spec in specs:
        net.set_active(spec)
        recalibrate_bn(net, calibration, 2)
        net.eval()
        with torch.no_grad():
            expected = net(x)
            model = net.extract(spec).eval()
            assert isinstance(model, MobileNetV3Net)
            got = model(x)
        assert expected.abs().max() > 1e-2  # logits of a meaningful size
        assert (expected - got).abs().max().item() <= 1e-5, spec


def test_expansion_equal_to_input_skips_the_expand_conv() -> None:
    space = tiny_space()
    torch.manual_seed(0)
    net = Supernet(space)
    randomise(net)
    spec = spec_of(space, lambda name, choices: min(choices) if name.endswith("_expansion")
                   else choices[-1])
    assert spec.blocks[0].expansion == spec.stem_channels == 8
    model = net.extract(spec).eval()
    first = model.features[1].block
    # depthwise, SE, project: no 1x1 expansion conv, as nas.models.builder builds it.
    assert len(first) == 3 and first[0][0].groups == 8
    net.set_active(spec)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max().item() <= 1e-5


def test_extraction_uses_the_builders_state_dict_names() -> None:
    space = tiny_space()
    net = Supernet(space)
    spec = net.largest_spec()
    state = net.extract(spec).state_dict()
    assert "features.1.block.0.0.weight" in state  # expand conv (e=16 != in 8)
    assert "features.1.block.2.fc1.weight" in state  # SE of the first block
    assert "classifier.3.weight" in state
    assert state["features.1.block.1.0.weight"].shape == (16, 1, 7, 7)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_sorting_channels_preserves_the_largest_network(norm: str) -> None:
    space = load_space("mobilenetv3_small")
    torch.manual_seed(0)
    net = Supernet(space, num_classes=5)
    randomise(net)
    net.set_active(net.largest_spec())
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.sort_channels(norm)
        after = net(x)
    # Same function; only the summation order inside the convs changes.
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    block = net.stages[2][0]  # s3, b1: no pinned channels
    weight = block.expand_conv.weight.flatten(1)
    importance = weight.abs().sum(1) if norm == "l1" else weight.norm(dim=1)
    assert torch.all(importance[:-1] >= importance[1:])


def test_sorting_keeps_the_channels_of_the_no_expansion_choice() -> None:
    space = load_space("mobilenetv3_small")
    torch.manual_seed(0)
    net = Supernet(space, num_classes=5)
    randomise(net)
    first = net.stages[0][0]  # s1: input 16, expansions 16/32/48
    assert first.pinned == 16
    pinned = first.depthwise.weight[:16].clone()
    # Without an expansion conv, depthwise channel i reads input channel i: sorting must not
    # move the first 16 channels, so this choice computes the same function afterwards.
    first.active = BlockSpec(kernel=5, expansion=16, out=16, se=True, activation="HS", stride=2)
    first.eval()
    x = torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        before = first(x)
        net.sort_channels()
        after = first(x)
    assert torch.equal(first.depthwise.weight[:16], pinned)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_sorting_permutes_optimizer_state_too() -> None:
    space = tiny_space()
    torch.manual_seed(0)
    net = Supernet(space)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    block = net.stages[1][0]  # input 8, expansions 32/48: nothing pinned
    weight = block.expand_conv.weight
    buffer = optimizer.state[weight]["momentum_buffer"].clone()
    order = torch.argsort(weight.detach().flatten(1).abs().sum(1), descending=True, stable=True)
    net.sort_channels(optimizer=optimizer)
    assert torch.equal(optimizer.state[weight]["momentum_buffer"], buffer.index_select(0, order))


def test_kernel_transform_starts_as_a_centre_crop() -> None:
    plain = DynamicDepthwise(4, (3, 5, 7), kernel_transform=False)
    transformed = DynamicDepthwise(4, (3, 5, 7), kernel_transform=True)
    transformed.weight.data.copy_(plain.weight.data)
    for k in (3, 5, 7):
        assert torch.equal(plain.weight_for(4, k), transformed.weight_for(4, k))
    assert torch.equal(plain.weight_for(2, 3), plain.weight[:2, :, 2:5, 2:5])
    assert set(transformed.transforms) == {"7to5", "5to3"}


def test_kernel_transform_extraction_matches() -> None:
    space = tiny_space()
    torch.manual_seed(0)
    net = Supernet(space, kernel_transform=True)
    randomise(net)
    with torch.no_grad():
        for matrix in net.parameters():
            if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1]:
                matrix.add_(0.1 * torch.randn_like(matrix))
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    for kernel in (3, 5):
        spec = spec_of(space, lambda name, choices: kernel if name.endswith("_kernel") else choices[-1])
        net.set_active(spec)
        with torch.no_grad():
            assert (net(x) - net.extract(spec).eval()(x)).abs().max().item() <= 1e-5


def test_specs_outside_the_space_are_rejected_with_the_field() -> None:
    space = tiny_space()
    net = Supernet(space)
    spec = net.largest_spec()
    bad = spec.with_blocks((spec.blocks[0].replace(kernel=9),) + spec.blocks[1:])
    with pytest.raises(SupernetError, match="kernel"):
        net.set_active(bad)
    with pytest.raises(SupernetError, match="width_mult"):
        Supernet(SearchSpace(name="w", base=space.base.replace(width_mult=0.5), stages=space.stages,
                             kernels=space.kernels, se=space.se, activations=space.activations))


def test_class_count_and_resolution_of_the_spec_may_differ() -> None:
    space = tiny_space()
    net = Supernet(space, num_classes=7)
    spec = net.largest_spec().replace(num_classes=1000, resolution=96)
    net.set_active(spec)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert net.extract(spec).spec.num_classes == 7
