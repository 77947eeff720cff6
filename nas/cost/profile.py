"""MAdds and parameter counts with fvcore, following the paper's convention.

The paper (and torchvision's docs) count multiply-adds of convolutions and fully connected
layers only. fvcore's default total also counts BatchNorm and pooling (226.0M for Large) and
warns about h-swish, h-sigmoid, ``mul`` and ``add``; here those ops get registered handles
that tally their element-wise work separately, and the MAdds total is conv + linear only
(BatchNorm and pooling stay visible in ``by_operator``): 216.6M for Large, 56.5M for Small.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from nas.arch.spec import NetworkSpec

with warnings.catch_warnings():
    # fvcore calls the deprecated torch.jit.script at import time.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count

# Ops that fvcore would warn about: they are element-wise, reported apart from MAdds.
ELEMENTWISE_OPS = (
    "aten::hardswish", "aten::hardswish_", "aten::hardsigmoid", "aten::hardsigmoid_",
    "aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::dropout", "aten::dropout_",
    "aten::relu", "aten::relu_", "aten::flatten",
    # ReLU6 (a clamp), swish, the soft SE gate and the decomposed h-swish's division.
    "aten::hardtanh", "aten::hardtanh_", "aten::relu6", "aten::relu6_", "aten::silu", "aten::silu_", "aten::sigmoid",
    "aten::sigmoid_", "aten::div", "aten::div_", "aten::rsub", "aten::clamp",
)
MADD_OPERATORS = ("conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum")


def _elementwise_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    shape = outputs[0].type().sizes() if outputs else None
    numel = 1
    for dim in shape or ():
        numel *= int(dim)
    return Counter({"elementwise": numel if shape is not None else 0})


@dataclass(frozen=True)
class Profile:
    """Cost figures of one network at its spec's resolution, batch 1."""

    madds: int
    params: int
    elementwise: int
    by_operator: dict[str, int]

    @property
    def madds_m(self) -> float:
        return self.madds / 1e6

    @property
    def params_m(self) -> float:
        return self.params / 1e6


def profile_module(model: torch.nn.Module, resolution: int) -> Profile:
    """Count a built module's MAdds (conv + linear) and parameters at ``resolution``."""
    model = model.eval()
    inputs = (torch.zeros(1, 3, resolution, resolution),)
    analysis = FlopCountAnalysis(model, inputs)
    for op in ELEMENTWISE_OPS:
        analysis.set_op_handle(op, _elementwise_handle)
    # Any op left unhandled is a real gap and should be seen, so warnings stay on for it;
    # uncalled modules (e.g. dropout in eval) are not a gap.
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad():
        by_operator = dict(analysis.by_operator())
    madds = sum(v for k, v in by_operator.items() if k in MADD_OPERATORS)
    return Profile(
        madds=int(madds),
        params=int(parameter_count(model)[""]),
        elementwise=int(by_operator.get("elementwise", 0)),
        by_operator=by_operator,
    )


def profile_spec(spec: NetworkSpec) -> Profile:
    """Build ``spec`` and profile it at its own input resolution."""
    from nas.models.builder import build_model

    return profile_module(build_model(spec), spec.resolution)
