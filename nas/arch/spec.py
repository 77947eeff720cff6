"""Architecture specs: the paper's Table 1/2 as immutable, self-validating data.

Everything in the project that passes an architecture around passes a :class:`NetworkSpec`.
It imports nothing of torch, so a search or a latency table can reason about networks
without building them.

Channel counts are absolute, as in the paper's tables ("exp" is the expansion layer's
width, not a ratio). A width multiplier other than 1.0 is resolved into concrete channel
counts by :meth:`NetworkSpec.resolved`, under one of two conventions (torchvision's and
TF-slim's; the paper's multiplier rows, Sec. 6.1.1 and its Appendix A):

* ``torchvision``: every channel count, including the pooled head width (1280/1024), is
  scaled with ``make_divisible(c * m, 8)``;
* ``tf`` (the paper's multiplier rows, TensorFlow slim): the block outputs are scaled, every
  expansion keeps its ratio to the *scaled* input, and the pooled head width is not scaled
  for multipliers below one;
* ``tf_finegrain``: as ``tf``, but the pooled head width is never scaled (TF-slim
  ``mobilenet_v3.mobilenet(finegrain_classification_mode=True)`` replaces the last layer's
  multiplier function with the identity for every multiplier). The paper's Large x1.25 row
  (7.5M parameters) matches this one (7.55M; ``tf`` gives 8.26M), its Small x1.25 row
  (3.6M) matches ``tf`` (3.65M; this one gives 3.21M): no single setting gives both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Literal

from nas.config import check_choice, check_int
from nas.errors import NASError

# RE: ReLU; HS: h-swish (paper Sec. 5.2, eq. 2); R6: ReLU6 (MobileNetV2); SW: swish, the soft
# x * sigmoid(x) that h-swish approximates (Sec. 5.2: hard and soft gave the same accuracy).
ACTIVATIONS = ("RE", "HS", "R6", "SW")
LAST_STAGES = ("efficient", "original", "mobilenetv2")
# The squeeze-and-excite gate: hard sigmoid (paper Sec. 5.3) or the soft sigmoid of SENet.
SE_GATES = ("hard", "soft")
# h-swish as one fused op or as x * relu6(x + 3) / 6 in separate ops (Table 5, third column).
HSWISH_IMPLS = ("fused", "decomposed")
WIDTH_CONVENTIONS = ("torchvision", "tf", "tf_finegrain")
STRIDES = (1, 2)
DILATIONS = (1, 2)

Activation = Literal["RE", "HS", "R6", "SW"]


class SpecError(NASError, ValueError):
    """An architecture spec (or a file holding one) is invalid.

    The message always names the offending field, and the block row when there is one.
    """


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor`` the way torchvision and TF slim do.

    Never rounds down by more than 10% (MobileNetV2 reference implementation).
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def _where(row: int | None) -> str:
    # Rows are counted from 1, like the lines of the paper's table.
    return f"bneck row {row + 1}: " if row is not None else ""


# Upper bounds far above any mobile network (MobileNetV3-Large's widest layer has 1280
# channels, ImageNet networks run at 224-600 px), so that a typo is refused before a
# builder tries to allocate terabytes.
MAX_CHANNELS = 16384
MAX_RESOLUTION = 4096
MAX_CLASSES = 100_000
MAX_BLOCKS = 200


def _check_int(name: str, value: object, *, row: int | None, minimum: int = 1,
               maximum: int = MAX_CHANNELS) -> None:
    check_int("", name, value, minimum=minimum, maximum=maximum, label=f"{_where(row)}field '{name}'",
              error=SpecError)


def _check_choice(name: str, value: object, allowed: tuple, *, row: int | None) -> None:
    check_choice("", name, value, allowed, label=f"{_where(row)}field '{name}'", error=SpecError)


@dataclass(frozen=True)
class BlockSpec:
    """One bneck row of the paper's Table 1/2.

    Attributes:
        kernel: depthwise kernel size (odd).
        expansion: width of the expansion layer in channels (absolute, not a ratio). When it
            equals the block's input channels the 1x1 expansion conv is omitted.
        out: output channels of the linear projection.
        se: squeeze-and-excite on the expansion.
        activation: ``"RE"`` (ReLU), ``"HS"`` (h-swish), ``"R6"`` (ReLU6) or ``"SW"``
            (swish, the soft form of h-swish).
        stride: 1 or 2.
        dilation: depthwise dilation, 1 or 2 (torchvision's ``dilated`` variant).
    """

    kernel: int
    expansion: int
    out: int
    se: bool
    activation: Activation
    stride: int
    dilation: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, row: int | None = None) -> None:
        """Raise :class:`SpecError` naming the field (and ``row``) when invalid."""
        _check_int("kernel", self.kernel, row=row, maximum=15)
        if self.kernel % 2 == 0:
            raise SpecError(f"{_where(row)}field 'kernel' must be odd, got {self.kernel}")
        _check_int("expansion", self.expansion, row=row)
        _check_int("out", self.out, row=row)
        if not isinstance(self.se, bool):
            raise SpecError(f"{_where(row)}field 'se' must be true or false, got {self.se!r}")
        _check_choice("activation", self.activation, ACTIVATIONS, row=row)
        _check_choice("stride", self.stride, STRIDES, row=row)
        _check_choice("dilation", self.dilation, DILATIONS, row=row)

    def replace(self, **changes: object) -> BlockSpec:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BlockContext:
    """A block together with what its position in the network determines."""

    index: int
    block: BlockSpec
    in_channels: int
    in_resolution: int

    @property
    def out_resolution(self) -> int:
        return conv_output_size(self.in_resolution, self.block.stride, self.block.dilation)

    @property
    def has_residual(self) -> bool:
        # Residual iff stride 1 and in == out (paper Sec. 5.3; torchvision uses the
        # configured stride even when dilation turns the conv stride into 1).
        return self.block.stride == 1 and self.in_channels == self.block.out


def conv_output_size(size: int, stride: int, dilation: int = 1) -> int:
    """Spatial size after a 'same'-padded conv; dilation replaces stride (torchvision)."""
    if stride == 1 or dilation > 1:
        return size
    return (size + 1) // 2


@dataclass(frozen=True)
class NetworkSpec:
    """A whole MobileNetV3-family network: stem, bneck blocks, head.

    Attributes:
        blocks: the bneck rows, in order.
        stem_channels: filters of the 3x3 stride-2 stem conv (16 in the paper).
        stem_activation: the stem's non-linearity.
        last_conv: channels of the 1x1 conv after the last block (960 / 576).
        head_features: width of the pooled feature layer (1280 / 1024).
        head_activation: non-linearity of the last conv and the pooled feature layer.
        last_stage: ``"efficient"`` (paper Fig. 5, bottom: pool right after the last conv),
            ``"original"`` (Fig. 5, top: expand, 3x3 depthwise, project, 1x1 to
            ``head_features``, then pool) or ``"mobilenetv2"`` (MobileNetV2's head: the 1x1
            conv to ``last_conv``, pool, dropout and the classifier; no pooled feature
            layer, so ``head_features`` must equal ``last_conv``).
        dropout: dropout before the classifier.
        num_classes: classifier outputs.
        resolution: input resolution (square).
        width_mult: width multiplier applied by :meth:`resolved`.
        width_convention: ``"torchvision"``, ``"tf"`` or ``"tf_finegrain"`` (see the module
            docstring).
        se_ratio: the SE bottleneck's width as a fraction of the expansion (paper: 1/4).
        se_gate: ``"hard"`` (hard sigmoid, the paper's) or ``"soft"`` (sigmoid) SE gate.
        hswish: ``"fused"`` (one op) or ``"decomposed"`` (``x * relu6(x + 3) / 6``) h-swish:
            the same function, timed differently (paper Table 5).
        name: free-form label, not part of the architecture's identity.
    """

    blocks: tuple[BlockSpec, ...]
    stem_channels: int = 16
    stem_activation: Activation = "HS"
    last_conv: int = 960
    head_features: int = 1280
    head_activation: Activation = "HS"
    last_stage: Literal["efficient", "original", "mobilenetv2"] = "efficient"
    dropout: float = 0.2
    num_classes: int = 1000
    resolution: int = 224
    width_mult: float = 1.0
    width_convention: Literal["torchvision", "tf", "tf_finegrain"] = "torchvision"
    se_ratio: float = 0.25
    se_gate: Literal["hard", "soft"] = "hard"
    hswish: Literal["fused", "decomposed"] = "fused"
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`SpecError` naming the field (and block row) when invalid."""
        if not isinstance(self.blocks, tuple) or not self.blocks:
            raise SpecError("field 'blocks' must hold at least one bneck row")
        if len(self.blocks) > MAX_BLOCKS:
            raise SpecError(f"field 'blocks' holds {len(self.blocks)} bneck rows; at most {MAX_BLOCKS}")
        for row, block in enumerate(self.blocks):
            if not isinstance(block, BlockSpec):
                raise SpecError(f"bneck row {row + 1}: expected a BlockSpec, got {block!r}")
            block.validate(row)
        _check_int("stem_channels", self.stem_channels, row=None)
        _check_choice("stem_activation", self.stem_activation, ACTIVATIONS, row=None)
        _check_int("last_conv", self.last_conv, row=None)
        _check_int("head_features", self.head_features, row=None)
        _check_choice("head_activation", self.head_activation, ACTIVATIONS, row=None)
        _check_choice("last_stage", self.last_stage, LAST_STAGES, row=None)
        if self.last_stage == "mobilenetv2" and self.head_features != self.last_conv:
            raise SpecError("last_stage 'mobilenetv2' pools the last conv's features: field "
                            f"'head_features' ({self.head_features}) must equal 'last_conv' "
                            f"({self.last_conv})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise SpecError(f"field 'dropout' must be a number, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"field 'dropout' must be in [0, 1), got {self.dropout}")
        _check_int("num_classes", self.num_classes, row=None, maximum=MAX_CLASSES)
        _check_int("resolution", self.resolution, row=None, minimum=8, maximum=MAX_RESOLUTION)
        if isinstance(self.width_mult, bool) or not isinstance(self.width_mult, (int, float)):
            raise SpecError(f"field 'width_mult' must be a number, got {self.width_mult!r}")
        if not 0 < self.width_mult <= 16:
            raise SpecError(f"field 'width_mult' must be in (0, 16], got {self.width_mult}")
        _check_choice("width_convention", self.width_convention, WIDTH_CONVENTIONS, row=None)
        if isinstance(self.se_ratio, bool) or not isinstance(self.se_ratio, (int, float)) \
                or not 0.001 <= self.se_ratio <= 1:
            raise SpecError(f"field 'se_ratio' must be a number in [0.001, 1], got {self.se_ratio!r}")
        if float(f"{self.se_ratio:g}") != self.se_ratio:  # keys and strings spell it with %g
            raise SpecError(f"field 'se_ratio' must have at most 6 significant digits, got "
                            f"{self.se_ratio!r}")
        _check_choice("se_gate", self.se_gate, SE_GATES, row=None)
        _check_choice("hswish", self.hswish, HSWISH_IMPLS, row=None)

    @property
    def options(self) -> OpOptions:
        """The network-wide settings that change how an op is built and timed."""
        return OpOptions(se_ratio=float(self.se_ratio), se_gate=self.se_gate, hswish=self.hswish)

    # ------------------------------------------------------------------ derived views
    def replace(self, **changes: object) -> NetworkSpec:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def contexts(self) -> Iterator[BlockContext]:
        """Each block with its input channels and input resolution.

        Only meaningful on a resolved spec (``width_mult == 1``); call :meth:`resolved`
        first otherwise.
        """
        channels = self.stem_channels
        size = conv_output_size(self.resolution, 2)
        for index, block in enumerate(self.blocks):
            ctx = BlockContext(index=index, block=block, in_channels=channels, in_resolution=size)
            yield ctx
            channels = block.out
            size = ctx.out_resolution

    @property
    def final_resolution(self) -> int:
        """Spatial size entering the head."""
        size = conv_output_size(self.resolution, 2)
        for block in self.blocks:
            size = conv_output_size(size, block.stride, block.dilation)
        return size

    def resolved(self) -> NetworkSpec:
        """The same network with the width multiplier applied: concrete channels, mult 1."""
        m = float(self.width_mult)
        if m == 1.0:
            return self
        if self.width_convention == "torchvision":
            return self._resolved_torchvision(m)
        return self._resolved_tf(m)

    def _head_widths(self, last_conv: int, head: int, m: float) -> dict[str, int]:
        # MobileNetV2's head has one width, the last conv's, kept for m < 1 and scaled above
        # (torchvision's mobilenet_v2: last_channel * max(1.0, width_mult)).
        if self.last_stage == "mobilenetv2":
            width = make_divisible(self.last_conv * max(1.0, m))
            return {"last_conv": width, "head_features": width}
        return {"last_conv": last_conv, "head_features": head}

    def _resolved_torchvision(self, m: float) -> NetworkSpec:
        # torchvision.models.mobilenetv3: every config channel goes through
        # _make_divisible(c * m, 8); the last conv is 6x the scaled last block output,
        # which is the ratio last_conv / last_out kept on the scaled output.
        blocks = tuple(
            b.replace(expansion=make_divisible(b.expansion * m), out=make_divisible(b.out * m))
            for b in self.blocks
        )
        return self.replace(
            blocks=blocks,
            stem_channels=make_divisible(self.stem_channels * m),
            **self._head_widths(_keep_ratio(self.last_conv, self.blocks[-1].out, blocks[-1].out),
                                make_divisible(self.head_features * m), m),
            width_mult=1.0,
        )

    def _resolved_tf(self, m: float) -> NetworkSpec:
        # TF slim mobilenet_v3: outputs scaled, expansions are ratios of the (scaled)
        # input ("expand_input_by_factor"), the pooled 1x1 head is kept for m < 1.
        stem = make_divisible(self.stem_channels * m)
        blocks = []
        base_in, scaled_in = self.stem_channels, stem
        for b in self.blocks:
            out = make_divisible(b.out * m)
            if b.expansion == base_in:
                expansion = scaled_in
            else:
                expansion = make_divisible(scaled_in * b.expansion / base_in)
            blocks.append(b.replace(expansion=expansion, out=out))
            base_in, scaled_in = b.out, out
        keep_head = m < 1.0 or self.width_convention == "tf_finegrain"
        head = self.head_features if keep_head else make_divisible(self.head_features * m)
        return self.replace(
            blocks=tuple(blocks),
            stem_channels=stem,
            **self._head_widths(_keep_ratio(self.last_conv, base_in, scaled_in), head, m),
            width_mult=1.0,
        )

    def with_blocks(self, blocks: list[BlockSpec] | tuple[BlockSpec, ...]) -> NetworkSpec:
        """A copy with other blocks."""
        return self.replace(blocks=tuple(blocks))


def _keep_ratio(value: int, base: int, scaled: int) -> int:
    """Scale ``value`` like ``base`` became ``scaled`` (expansion-style layers)."""
    return make_divisible(scaled * value / base)


@dataclass(frozen=True)
class OpOptions:
    """Network-wide op settings (SE width and gate, h-swish implementation); the defaults are
    the paper's MobileNetV3, and ops built with them are keyed as before."""

    se_ratio: float = 0.25
    se_gate: str = "hard"
    hswish: str = "fused"


DEFAULT_OPTIONS = OpOptions()


def squeeze_channels(expansion: int, ratio: float = 0.25) -> int:
    """SE bottleneck width: ``ratio`` (paper Sec. 5.3: a quarter) of the expansion, rounded
    to 8 (``int(e * 0.25) == e // 4``, the canonical nets' widths)."""
    return make_divisible(int(expansion * ratio), 8)


def original_stage_projection(spec: NetworkSpec) -> int:
    """Channels of the projection in the paper's original last stage (Fig. 5: 320 = 2 x 160)."""
    return 2 * spec.blocks[-1].out
