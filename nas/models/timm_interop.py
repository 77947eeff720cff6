"""A spec in timm, weights included: the snippet that builds it with timm's own MobileNetV3
builder, and this project's state_dict under timm's key names.

timm is not a dependency of the project; the snippet is text for the user's timm (>= 1.0),
and the key mapping needs only the state_dict of the timm model it fills.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch

from nas.arch.convert import to_timm
from nas.arch.spec import NetworkSpec, SpecError
from nas.models.builder import BN_EPS


def to_timm_python(spec: NetworkSpec) -> str:
    """A runnable snippet that builds ``spec`` with timm's MobileNetV3 builder as ``model``.

    The arch_def alone leaves timm to its own defaults, which differ from this project's
    network (a JSON-only build missed the SE layer and BatchNorm eps), so the snippet passes
    what ``timm.create_model("mobilenetv3_*_100")`` passes (``_gen_mobilenet_v3``: SE with a
    hard-sigmoid gate, ReLU inside, reduced width rounded to 8) plus the BatchNorm eps of
    :func:`nas.models.builder.build_model`, so trained weights give the same logits.
    """
    timm = to_timm(spec)
    stages = "\n".join(f"    {stage!r}," for stage in timm["arch_def"])
    return f"""# {spec.name or 'network'} in timm (>= 1.0), built with timm's MobileNetV3 builder
from functools import partial

import torch.nn as nn
from timm.layers import get_act_layer
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.mobilenetv3 import MobileNetV3

arch_def = [
{stages}
]
model = MobileNetV3(
    block_args=decode_arch_def(arch_def),
    stem_size={timm["stem_size"]},
    num_features={timm["num_features"]},
    num_classes={timm["num_classes"]},
    drop_rate={timm["drop_rate"]},
    act_layer=get_act_layer({timm["act_layer"]!r}),
    round_chs_fn=int, fix_stem=True,  # the widths as written (timm rounds to 8 otherwise)
    se_layer=partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU,
                     rd_round_fn=round_channels),
    norm_layer=partial(nn.BatchNorm2d, eps={BN_EPS}),
)
"""


def to_timm_state_dict(state_dict: Mapping[str, torch.Tensor],
                       timm_state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """``state_dict`` of :func:`~nas.models.builder.build_model` under the key names of
    ``timm_state_dict`` (the state_dict of the timm model it is to be loaded into).

    Both networks hold the same tensors in the same order (stem, blocks in order with
    expand / depthwise / SE / project, last conv, head, classifier); the one difference in
    shape is the head, a Linear here and a 1x1 conv (``conv_head``) in timm. Shapes are
    checked tensor by tensor, so the weights of another network fail at the first mismatch.
    """
    ours = list(state_dict.items())
    theirs = list(timm_state_dict.items())
    if len(ours) != len(theirs):
        raise SpecError(f"state_dict has {len(ours)} tensors, the timm model {len(theirs)}: "
                        "not the same network (build it from this spec's to_timm_python)")
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (name, tensor), (key, target) in zip(ours, theirs):
        if tensor.dim() == 2 and target.dim() == 4:
            tensor = tensor[:, :, None, None]  # the head's Linear(576, 1024) -> 1x1 conv_head
        if tensor.shape != target.shape:
            raise SpecError(f"{name} {tuple(tensor.shape)} does not fit timm's {key} "
                            f"{tuple(target.shape)}: not the same network")
        renamed[key] = tensor
    return renamed


__all__ = ["to_timm_python", "to_timm_state_dict"]
