"""A depthwise convolution that skips the kernel taps that only ever read padding.

At the proxy's 32 px the last stages of a MobileNetV3 run on 2x2 and 1x1 maps, where a 5x5
or 7x7 depthwise kernel reads zero padding with all but its central taps: on a 1x1 map the
convolution is a per-channel scale by the centre tap. oneDNN still computes the whole kernel,
and its backward pass over those taps costs a noticeable share of a training step on one
CPU thread (the measurement is on the docs' training results page).
Convolving with the taps that reach the input gives the same outputs and the same gradients
(the skipped taps' gradients are zero either way), only sooner. Graph capture (``jit.trace``,
``torch.export`` for LiteRT and ExecuTorch,
ONNX export, fvcore's FLOP count) sees the whole kernel, so an exported model serves every
input size and FLOPs count the kernel the spec declares. (A latency table measured through
the builder at such small resolutions times the trimmed conv, as the network runs.)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import ConvNormActivation


def _axis_plan(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int, int, int]:
    """Along one dimension of ``size`` input positions (dilation 1): the first and last kernel
    tap that reads an input position for some output, the output count, and the padding the
    trimmed kernel needs before and after the input."""
    outputs = (size + 2 * padding - kernel) // stride + 1
    # Output i reads input stride * i - padding + t with tap t: the last output reaches
    # furthest to the left of the kernel, the first one furthest to the right.
    first = max(0, padding - stride * (outputs - 1))
    last = min(kernel - 1, size - 1 + padding)
    # The trimmed kernel starts ``first`` taps in, so ``first`` fewer padding positions
    # precede the input; the far side needs only what the last output reads.
    before = padding - first
    after = max(0, stride * (outputs - 1) - padding + last - (size - 1))
    return first, last, outputs, before, after


def reached_taps(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """The first and last kernel tap that reads an input position (not padding) for some
    output position, along one dimension of ``size`` input positions (dilation 1)."""
    first, last, *_ = _axis_plan(size, kernel, stride, padding)
    return first, last


def trimmed_depthwise_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             stride: tuple[int, int], padding: tuple[int, int],
                             groups: int) -> torch.Tensor:
    """``F.conv2d`` (zero padding, dilation 1) over only the kernel taps that reach the input;
    the whole kernel under graph capture (module docstring)."""
    (size_h, size_w), (kernel_h, kernel_w) = input.shape[-2:], weight.shape[-2:]
    first_h, last_h, outputs_h, left_h, right_h = _axis_plan(size_h, kernel_h, stride[0], padding[0])
    first_w, last_w, outputs_w, left_w, right_w = _axis_plan(size_w, kernel_w, stride[1], padding[1])
    if ((first_h, last_h, first_w, last_w) == (0, kernel_h - 1, 0, kernel_w - 1)
            or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_exporting() or torch.compiler.is_compiling()):
        return F.conv2d(input, weight, bias, stride, padding, 1, groups)
    trimmed = weight[:, :, first_h:last_h + 1, first_w:last_w + 1]
    if (left_h, left_w) == (right_h, right_w):
        out = F.conv2d(input, trimmed, bias, stride, (left_h, left_w), 1, groups)
    else:
        padded = F.pad(input, (left_w, right_w, left_h, right_h))
        out = F.conv2d(padded, trimmed, bias, stride, 0, 1, groups)
    return out[..., :outputs_h, :outputs_w]


class TrimmedDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state_dict) that convolves a grouped kernel with
    only the taps that reach the input (module docstring)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        if (self.groups == 1 or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or self.dilation != (1, 1)):
            return super()._conv_forward(input, weight, bias)
        return trimmed_depthwise_conv2d(input, weight, bias, self.stride, self.padding, self.groups)


class DepthwiseConv2dNormActivation(ConvNormActivation):
    """torchvision's ``Conv2dNormActivation`` for a depthwise kernel, with the trimmed conv:
    the same layers, state_dict names and initialisation."""

    def __init__(self, channels: int, kernel_size: int, stride: int, dilation: int,
                 norm_layer: Callable[..., nn.Module],
                 activation_layer: Callable[..., nn.Module] | None) -> None:
        super().__init__(channels, channels, kernel_size, stride, None, channels, norm_layer,
                         activation_layer, dilation, None, None, TrimmedDepthwiseConv2d)


__all__ = ["DepthwiseConv2dNormActivation", "TrimmedDepthwiseConv2d", "reached_taps",
           "trimmed_depthwise_conv2d"]
