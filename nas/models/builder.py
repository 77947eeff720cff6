"""Build a :class:`~nas.arch.spec.NetworkSpec` into an ``nn.Module``.

The module mirrors ``torchvision.models.mobilenetv3.MobileNetV3`` layer for layer and reuses
its ops (``Conv2dNormActivation``, ``SqueezeExcitation``), so the state_dict names are
torchvision's (``features.3.block.2.fc1.weight``) and torchvision's weights load into the
canonical networks unchanged. Unlike torchvision, channel counts are taken as given (no
rounding to 8), and stem/head activations, the last conv width and the last stage vary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation

from nas.arch.spec import (
    DEFAULT_OPTIONS,
    BlockSpec,
    NetworkSpec,
    OpOptions,
    original_stage_projection,
    squeeze_channels,
)
from nas.models.depthwise import DepthwiseConv2dNormActivation

# torchvision's MobileNetV3 BatchNorm settings (eps 0.001, momentum 0.01; torchvision
# models/mobilenetv3.py, following the paper's TF reference).
BN_EPS = 0.001
BN_MOMENTUM = 0.01


def mobilenet_batch_norm(channels: int, *, cls: type[nn.BatchNorm2d] = nn.BatchNorm2d) -> nn.BatchNorm2d:
    """A BatchNorm layer with MobileNetV3's settings; ``cls`` lets a subclass (the supernet's
    elastic BatchNorm) share them."""
    return cls(channels, eps=BN_EPS, momentum=BN_MOMENTUM)

class DecomposedHardswish(nn.Module):
    """h-swish as separate ops, ``x * relu6(x + 3) / 6`` (paper eq. 2): the same function as
    ``nn.Hardswish``, for Table 5's "without the fused h-swish" timings."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()  # ``inplace`` accepted (Conv2dNormActivation passes it) but unused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3.0) / 6.0


_ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {
    "RE": nn.ReLU, "HS": nn.Hardswish, "R6": nn.ReLU6, "SW": nn.SiLU}
_SE_GATES: dict[str, type[nn.Module]] = {"hard": nn.Hardsigmoid, "soft": nn.Sigmoid}


def activation_layer(name: str, hswish: str = "fused") -> type[nn.Module]:
    """The torch module class for an activation name (``nas.arch.spec.ACTIVATIONS``)."""
    if name == "HS" and hswish == "decomposed":
        return DecomposedHardswish
    return _ACTIVATION_LAYERS[name]


def squeeze_excitation(channels: int, squeeze: int, gate: str) -> nn.Module:
    """torchvision's ``SqueezeExcitation`` with the spec's gate (hard sigmoid in the paper)."""
    return SqueezeExcitation(channels, squeeze, scale_activation=_SE_GATES[gate])


@dataclass(frozen=True)
class Layers:
    """The layer factories a network is built from, injectable as torchvision's ``norm_layer``
    and timm's ``se_layer``/``act_layer`` are: replace one to build the same architecture
    with another normalisation, activation or SE implementation.

    Attributes:
        norm: ``norm(channels) -> module`` after every convolution.
        activation: ``activation(name, hswish) -> module class`` for ``RE``/``HS``/...
        se: ``se(channels, squeeze_channels, gate) -> module``.
    """

    norm: Callable[[int], nn.Module] = mobilenet_batch_norm
    activation: Callable[[str, str], type[nn.Module]] = activation_layer
    se: Callable[[int, int, str], nn.Module] = squeeze_excitation


DEFAULT_LAYERS = Layers()


class Bneck(nn.Module):
    """The MobileNetV3 bottleneck (paper Fig. 4), torchvision's ``InvertedResidual`` layout.

    1x1 expansion (omitted when ``expansion == in_channels``), kxk depthwise, optional SE on
    the expansion with a hard-sigmoid gate, linear 1x1 projection; residual iff stride 1 and
    ``in_channels == out``.
    """

    def __init__(self, in_channels: int, block: BlockSpec,
                 options: OpOptions = DEFAULT_OPTIONS, *, factories: Layers = DEFAULT_LAYERS) -> None:
        super().__init__()
        norm_layer = factories.norm
        act = factories.activation(block.activation, options.hswish)
        layers: list[nn.Module] = []
        if block.expansion != in_channels:
            layers.append(
                Conv2dNormActivation(in_channels, block.expansion, kernel_size=1,
                                     norm_layer=norm_layer, activation_layer=act)
            )
        # torchvision: a dilated depthwise conv keeps the resolution (stride 1).
        stride = 1 if block.dilation > 1 else block.stride
        # Skips the kernel taps that read only padding on small maps (nas.models.depthwise).
        layers.append(
            DepthwiseConv2dNormActivation(block.expansion, block.kernel, stride, block.dilation,
                                          norm_layer=norm_layer, activation_layer=act)
        )
        if block.se:
            layers.append(factories.se(block.expansion,
                                       squeeze_channels(block.expansion, options.se_ratio),
                                       options.se_gate))
        layers.append(
            Conv2dNormActivation(block.expansion, block.out, kernel_size=1,
                                 norm_layer=norm_layer, activation_layer=None)
        )
        self.block = nn.Sequential(*layers)  # torchvision's layout, so its state_dict names
        self.use_res_connect = block.stride == 1 and in_channels == block.out
        self.out_channels = block.out
        # Positions of the named parts in ``block`` (plain ints: no second module registration).
        names = (["expand"] if block.expansion != in_channels else []) + ["depthwise"]
        names += (["se"] if block.se else []) + ["project"]
        self._positions = {name: index for index, name in enumerate(names)}

    def _part(self, name: str) -> nn.Module | None:
        index = self._positions.get(name)
        return None if index is None else self.block[index]

    @property
    def expand(self) -> nn.Module | None:
        """The 1x1 expansion conv + BN + activation; None when ``expansion == in_channels``."""
        return self._part("expand")

    @property
    def depthwise(self) -> nn.Module:
        """The kxk depthwise conv + BN + activation."""
        part = self._part("depthwise")
        assert part is not None
        return part

    @property
    def se(self) -> nn.Module | None:
        """The squeeze-and-excite module; None without SE."""
        return self._part("se")

    @property
    def project(self) -> nn.Module:
        """The linear 1x1 projection conv + BN."""
        part = self._part("project")
        assert part is not None
        return part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = result + x
        return result


class MobileNetV3Net(nn.Module):
    """A network built from a spec: ``features`` / ``avgpool`` / ``classifier`` as in torchvision."""

    def __init__(self, spec: NetworkSpec, *, factories: Layers = DEFAULT_LAYERS) -> None:
        super().__init__()
        self.spec = spec
        resolved = spec.resolved()
        options = resolved.options
        norm_layer = factories.norm
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, resolved.stem_channels, kernel_size=3, stride=2,
                                 norm_layer=norm_layer,
                                 activation_layer=factories.activation(resolved.stem_activation,
                                                                       options.hswish))
        ]
        for ctx in resolved.contexts():
            layers.append(Bneck(ctx.in_channels, ctx.block, options, factories=factories))
        head_act = factories.activation(resolved.head_activation, options.hswish)
        last_out = resolved.blocks[-1].out
        if resolved.last_stage == "original":
            # Paper Fig. 5 (top), the MobileNetV2-style stage: expand, 3x3 depthwise,
            # project, 1x1 to the feature width, then pool and classify.
            project = original_stage_projection(resolved)
            layers.append(Bneck(last_out, BlockSpec(
                kernel=3, expansion=resolved.last_conv, out=project, se=False,
                activation=resolved.head_activation, stride=1), options, factories=factories))
            layers.append(Conv2dNormActivation(project, resolved.head_features, kernel_size=1,
                                               norm_layer=norm_layer, activation_layer=head_act))
            classifier: list[nn.Module] = [nn.Dropout(p=resolved.dropout, inplace=True),
                                           nn.Linear(resolved.head_features, resolved.num_classes)]
        else:
            # Paper Fig. 5 (bottom) and MobileNetV2 (Sandler et al. 2018, Table 2): the 1x1
            # conv to last_conv, pool; then the efficient stage's pooled 1x1 to the feature
            # width and the classifier, or MobileNetV2's classifier alone.
            layers.append(Conv2dNormActivation(last_out, resolved.last_conv, kernel_size=1,
                                               norm_layer=norm_layer, activation_layer=head_act))
            if resolved.last_stage == "mobilenetv2":
                classifier = [nn.Dropout(p=resolved.dropout),
                              nn.Linear(resolved.last_conv, resolved.num_classes)]
            else:
                classifier = [
                    nn.Linear(resolved.last_conv, resolved.head_features),
                    head_act(inplace=True),
                    # Not in-place (torchvision's is): ReLU saves its output for backward, so
                    # an in-place dropout after an in-place ReLU head breaks autograd.
                    nn.Dropout(p=resolved.dropout),
                    nn.Linear(resolved.head_features, resolved.num_classes),
                ]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(*classifier)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def init_weights(module: nn.Module) -> None:
    """torchvision's MobileNetV3 initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build_model(spec: NetworkSpec, *, num_classes: int | None = None,
                factories: Layers = DEFAULT_LAYERS) -> MobileNetV3Net:
    """Build ``spec`` (optionally with another class count) into a module, from ``factories``."""
    if num_classes is not None and num_classes != spec.num_classes:
        spec = spec.replace(num_classes=num_classes)
    return MobileNetV3Net(spec, factories=factories)
