"""The trimmed depthwise convolution computes what nn.Conv2d computes, gradients included."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from nas.models.depthwise import TrimmedDepthwiseConv2d, reached_taps, trimmed_depthwise_conv2d


@pytest.mark.parametrize("size,kernel,stride,padding,expected", [
    (1, 5, 1, 2, (2, 2)),  # a 1x1 map: only the centre tap
    (2, 7, 1, 3, (2, 4)),  # a 2x2 map: the central 3 taps
    (2, 5, 2, 2, (2, 3)),  # 2x2 -> 1x1 at stride 2: taps 2 and 3 (asymmetric)
    (7, 5, 1, 2, (0, 4)),  # a map as large as the kernel: every tap
    (4, 7, 2, 3, (1, 6)),
])
def test_reached_taps(size, kernel, stride, padding, expected):
    assert reached_taps(size, kernel, stride, padding) == expected


CASES = list(itertools.product((1, 2, 3, 4, 5, 8), (3, 5, 7), (1, 2)))


@pytest.mark.parametrize("size,kernel,stride", CASES)
def test_outputs_and_gradients_match_the_whole_kernel(size, kernel, stride):
    torch.manual_seed(size * 100 + kernel * 10 + stride)
    channels = 6
    conv = TrimmedDepthwiseConv2d(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=True)
    x = torch.randn(3, channels, size, size + 1, requires_grad=True)  # non-square: each axis its own
    out = conv(x)
    reference = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, 1, channels)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, conv.weight, conv.bias), upstream)
    reference_grads = torch.autograd.grad(reference, (x, conv.weight, conv.bias), upstream)
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want)


def test_small_maps_are_trimmed_and_tracing_sees_the_whole_kernel(monkeypatch):
    """The fast path runs at 1x1 (else the test above proves nothing) and not under tracing,
    so an exported graph and fvcore's FLOP count keep the declared kernel."""
    conv = TrimmedDepthwiseConv2d(4, 4, 5, 1, 2, groups=4, bias=False)
    kernels = []
    real_conv2d = F.conv2d

    def spy(input, weight, *args, **kwargs):
        kernels.append(tuple(int(k) for k in weight.shape[-2:]))
        return real_conv2d(input, weight, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    conv(torch.randn(2, 4, 1, 1))
    assert kernels == [(1, 1)]
    kernels.clear()
    torch.jit.trace(conv, torch.randn(2, 4, 1, 1), check_trace=False)
    assert kernels == [(5, 5)]


def test_the_function_the_supernet_uses_matches_too():
    """nas.supernet.dynamic_ops.DynamicDepthwise convolves through the function directly."""
    torch.manual_seed(1)
    x, weight = torch.randn(2, 5, 2, 2), torch.randn(5, 1, 7, 7)
    for stride in (1, 2):
        got = trimmed_depthwise_conv2d(x, weight, None, (stride, stride), (3, 3), 5)
        torch.testing.assert_close(got, F.conv2d(x, weight, None, stride, 3, 1, 5))


def test_torch_export_captures_the_whole_kernel():
    """LiteRT and ExecuTorch convert through torch.export: the exported graph must be the
    plain convolution the spec declares (a trimmed one left convs out of XNNPACK)."""
    import torch

    from nas.models.depthwise import trimmed_depthwise_conv2d

    class OnTinyMap(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return trimmed_depthwise_conv2d(x, torch.ones(8, 1, 5, 5), None, (1, 1), (2, 2), 8)

    graph = torch.export.export(OnTinyMap(), (torch.randn(1, 8, 1, 1),)).graph
    ops = [str(node.target) for node in graph.nodes if node.op == "call_function"]
    assert any("conv2d" in op for op in ops) and not any("slice" in op or "pad" in op for op in ops)
