"""Latency keys: one string per op whose cost a latency table stores.

A network's latency is predicted as the sum of its ops (paper Sec. 4/5, NetAdapt's and
Once-for-All's lookup tables): the stem, every bneck, the last 1x1 conv, the global pool
and the classifier head. A key names everything that changes an op's cost -- op kind,
input resolution, input channels, expansion, output channels, kernel, stride, SE,
activation, dilation -- and nothing else, so two positions with the same inputs share an
entry. Batch, dtype, threads and runtime are properties of the whole table (provenance).

Key strings (readable, and parsed back by :func:`parse_key`)::

    stem_r224_i3_k3_c16_s2_hs             3x3 stride-2 conv + BN + act on the image
    bneck_r56_i24_k5_e72_c40_s2_se_re     a bneck (``_d2`` appended for dilation 2)
    bneck_r28_i40_k5_e240_c40_s1_se0p5sig_hsd
                                          SE ratio 0.5 with a soft sigmoid gate, h-swish
                                          decomposed (only non-default options are spelled)
    lastconv_r7_i160_k1_c960_s1_hs        1x1 conv + BN + act after the last block
    pool_r7_i960                          global average pool + flatten
    head_i960_e1280_c1000_hs              Linear, act, dropout, Linear (efficient stage)
    head_i1280_c1000                      dropout, Linear (original last stage, MobileNetV2)

This module imports nothing of torch; :func:`build_op` (which does) lives here too so the
key format and the op it stands for cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Union

from nas.arch.block_code import ACT_TOKENS, act_token, format_block, parse_block
from nas.arch.spec import (
    DEFAULT_OPTIONS,
    BlockSpec,
    NetworkSpec,
    OpOptions,
    SpecError,
    conv_output_size,
    original_stage_projection,
)
from nas.errors import NASError

if TYPE_CHECKING:  # pragma: no cover
    from nas.arch.space import SearchSpace

OPS = ("stem", "bneck", "lastconv", "pool", "head")
KEY_COLUMNS = ["op", "in_res", "in_ch", "exp", "out", "kernel", "stride", "se", "act", "dilation"]


class BadKeyError(NASError, ValueError):
    """A string is not a latency key."""


@dataclass(frozen=True)
class KeyFields:
    """The parsed fields of a key; fields an op does not have are 0 / ``"-"``."""

    op: str
    in_res: int
    in_ch: int
    exp: int = 0
    out: int = 0
    kernel: int = 0
    stride: int = 1
    se: bool = False
    act: str = "-"
    dilation: int = 1
    # Spelled in the key only (not table columns): the network-wide op settings.
    options: OpOptions = DEFAULT_OPTIONS

    def as_row(self) -> dict[str, object]:
        return {c: getattr(self, c) for c in KEY_COLUMNS}


# The block part of a bneck key is the one block grammar (nas.arch.block_code), with the
# op-option tokens (SE ratio and gate, decomposed h-swish) that change an op's cost.
_A = "|".join(ACT_TOKENS)


def _parse_act(token: str) -> tuple[str, OpOptions]:
    if token == "hsd":
        return "HS", dataclasses.replace(DEFAULT_OPTIONS, hswish="decomposed")
    return token.upper(), DEFAULT_OPTIONS


# ---------------------------------------------------------------------------- formatting
def stem_key(resolution: int, out: int, activation: str, in_ch: int = 3,
             options: OpOptions = DEFAULT_OPTIONS) -> str:
    return f"stem_r{resolution}_i{in_ch}_k3_c{out}_s2_{act_token(activation, options)}"


@lru_cache(maxsize=65536)
def bneck_key(in_res: int, in_ch: int, block: BlockSpec, options: OpOptions = DEFAULT_OPTIONS) -> str:
    """Key of ``block`` run on an ``in_ch`` x ``in_res`` x ``in_res`` input."""
    return f"bneck_r{in_res}_i{in_ch}_{format_block(block, options)}"


def lastconv_key(in_res: int, in_ch: int, out: int, activation: str,
                 options: OpOptions = DEFAULT_OPTIONS) -> str:
    return f"lastconv_r{in_res}_i{in_ch}_k1_c{out}_s1_{act_token(activation, options)}"


def pool_key(in_res: int, channels: int) -> str:
    return f"pool_r{in_res}_i{channels}"


def head_key(in_ch: int, hidden: int, classes: int, activation: str | None,
             options: OpOptions = DEFAULT_OPTIONS) -> str:
    """Classifier key; ``hidden == 0`` is the original stage's single Linear."""
    if hidden:
        return f"head_i{in_ch}_e{hidden}_c{classes}_{act_token(str(activation), options)}"
    return f"head_i{in_ch}_c{classes}"


_PATTERNS = {
    "stem": re.compile(rf"^stem_r(\d+)_i(\d+)_k(\d+)_c(\d+)_s(\d+)_({_A})$"),
    "bneck": re.compile(r"^bneck_r(\d+)_i(\d+)_(k.*)$"),
    "lastconv": re.compile(rf"^lastconv_r(\d+)_i(\d+)_k(\d+)_c(\d+)_s(\d+)_({_A})$"),
    "pool": re.compile(r"^pool_r(\d+)_i(\d+)$"),
    "head": re.compile(rf"^head_i(\d+)(?:_e(\d+))?_c(\d+)(?:_({_A}))?$"),
}


@lru_cache(maxsize=65536)
def parse_key(key: str) -> KeyFields:
    """The fields of a key string; :class:`BadKeyError` if it is not one."""
    op = key.split("_", 1)[0]
    pattern = _PATTERNS.get(op)
    match = pattern.match(key) if pattern else None
    if not match:
        raise BadKeyError(f"{key!r} is not a latency key (like 'bneck_r56_i24_k5_e72_c40_s2_se_re'; "
                          f"op kinds {list(OPS)})")
    g = match.groups()
    if op in ("stem", "lastconv"):
        act, options = _parse_act(g[5])
        return KeyFields(op=op, in_res=int(g[0]), in_ch=int(g[1]), kernel=int(g[2]),
                         out=int(g[3]), stride=int(g[4]), act=act, options=options)
    if op == "bneck":
        try:
            block, options = parse_block(g[2], "its block part")
        except SpecError as err:
            raise BadKeyError(f"{key!r} is not a latency key: {err}") from None
        return KeyFields(op=op, in_res=int(g[0]), in_ch=int(g[1]), kernel=block.kernel,
                         exp=block.expansion, out=block.out, stride=block.stride, se=block.se,
                         act=block.activation, dilation=block.dilation, options=options)
    if op == "pool":
        return KeyFields(op=op, in_res=int(g[0]), in_ch=int(g[1]), out=int(g[1]))
    hidden = int(g[1] or 0)
    if bool(hidden) != bool(g[3]):
        raise BadKeyError(f"{key!r}: a head has both a hidden width (_e) and an activation, or neither")
    act, options = _parse_act(g[3]) if g[3] else ("-", DEFAULT_OPTIONS)
    return KeyFields(op=op, in_res=1, in_ch=int(g[0]), exp=hidden, out=int(g[2]),
                     act=act, options=options)


# ---------------------------------------------------------------------------- enumeration
def _tail_keys(spec: NetworkSpec) -> tuple[str, ...]:
    """Keys after the last block (paper Fig. 5: efficient or original last stage)."""
    size, last_out, act = spec.final_resolution, spec.blocks[-1].out, spec.head_activation
    options = spec.options
    if spec.last_stage == "mobilenetv2":
        return (lastconv_key(size, last_out, spec.last_conv, act, options),
                pool_key(size, spec.last_conv),
                head_key(spec.last_conv, 0, spec.num_classes, None))
    if spec.last_stage == "efficient":
        return (lastconv_key(size, last_out, spec.last_conv, act, options),
                pool_key(size, spec.last_conv),
                head_key(spec.last_conv, spec.head_features, spec.num_classes, act, options))
    project = original_stage_projection(spec)
    stage = BlockSpec(kernel=3, expansion=spec.last_conv, out=project, se=False,
                      activation=act, stride=1)
    return (bneck_key(size, last_out, stage, options),
            lastconv_key(size, project, spec.head_features, act, options),
            pool_key(size, spec.head_features),
            head_key(spec.head_features, 0, spec.num_classes, None))


@lru_cache(maxsize=8192)
def _cached_spec_keys(spec: NetworkSpec) -> tuple[str, ...]:
    return _spec_keys(spec)


def _spec_keys(spec: NetworkSpec) -> tuple[str, ...]:
    spec = spec.resolved()
    options = spec.options
    keys = [stem_key(spec.resolution, spec.stem_channels, spec.stem_activation, options=options)]
    channels = spec.stem_channels
    size = conv_output_size(spec.resolution, 2)
    for block in spec.blocks:
        keys.append(bneck_key(size, channels, block, options))
        channels = block.out
        size = conv_output_size(size, block.stride, block.dilation)
    keys.extend(_tail_keys(spec))
    return tuple(keys)


def spec_key_tuple(spec: NetworkSpec) -> tuple[str, ...]:
    """The keys of ``spec`` in network order (repeats kept), cached: the hot path of predict."""
    return _cached_spec_keys(spec)


def keys_for_spec(spec: NetworkSpec) -> list[str]:
    """Every key ``spec`` needs, in network order (a key used twice appears twice)."""
    return list(_cached_spec_keys(spec))


def keys_for_space(space: SearchSpace) -> list[str]:
    """Every key any spec of ``space`` can need: stem, each block choice, the tail."""
    base = space.base.resolved()
    options = base.options
    keys = [stem_key(base.resolution, base.stem_channels, base.stem_activation, options=options)]
    for in_ch, in_res, candidates in space.block_choices():
        keys.extend(bneck_key(in_res, in_ch, block, options) for block in candidates)
    keys.extend(_tail_keys(base))
    return _unique(keys)


SpecsOrSpace = Union["SearchSpace", NetworkSpec, Iterable[Union["SearchSpace", NetworkSpec]]]


def keys_for(items: SpecsOrSpace) -> list[str]:
    """Unique keys (first-seen order) for a space, a spec, or an iterable mixing both."""
    from nas.arch.space import SearchSpace

    if isinstance(items, (NetworkSpec, SearchSpace)):
        items = [items]
    keys: list[str] = []
    for item in items:
        if isinstance(item, SearchSpace):
            keys.extend(keys_for_space(item))
        elif isinstance(item, NetworkSpec):
            keys.extend(keys_for_spec(item))
        elif isinstance(item, str):
            parse_key(item)
            keys.append(item)
        else:
            raise TypeError(f"expected a SearchSpace, a NetworkSpec or a key, got {type(item).__name__}")
    return _unique(keys)


def _unique(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))


# ---------------------------------------------------------------------------- the op itself
def build_op(key: str):
    """The ``nn.Module`` a key stands for, built exactly as :mod:`nas.models.builder` builds it,
    and its input shape without the batch dimension.

    Returns ``(module, input_shape)`` with the module in eval mode and torchvision's
    initialisation.
    """
    from torch import nn
    from torchvision.ops import Conv2dNormActivation

    from nas.models.builder import DEFAULT_LAYERS, Bneck, activation_layer, init_weights

    f = parse_key(key)
    if f.op == "stem" or f.op == "lastconv":
        module: nn.Module = Conv2dNormActivation(
            f.in_ch, f.out, kernel_size=f.kernel, stride=f.stride, norm_layer=DEFAULT_LAYERS.norm,
            activation_layer=activation_layer(f.act, f.options.hswish))
        shape: tuple[int, ...] = (f.in_ch, f.in_res, f.in_res)
    elif f.op == "bneck":
        block = BlockSpec(kernel=f.kernel, expansion=f.exp, out=f.out, se=f.se,
                          activation=f.act, stride=f.stride, dilation=f.dilation)
        module = Bneck(f.in_ch, block, f.options)
        shape = (f.in_ch, f.in_res, f.in_res)
    elif f.op == "pool":
        # MobileNetV3Net.forward: avgpool then torch.flatten(x, 1).
        module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        shape = (f.in_ch, f.in_res, f.in_res)
    else:
        if f.exp:
            act = activation_layer(f.act, f.options.hswish)
            # As nas.models.builder builds it (dropout not in place; a no-op in eval either way).
            module = nn.Sequential(nn.Linear(f.in_ch, f.exp), act(inplace=True),
                                   nn.Dropout(p=0.2), nn.Linear(f.exp, f.out))
        else:
            module = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(f.in_ch, f.out))
        shape = (f.in_ch,)
    init_weights(module)
    return module.eval(), shape


__all__ = [
    "BadKeyError", "KEY_COLUMNS", "KeyFields", "OPS", "bneck_key", "build_op", "head_key",
    "keys_for", "keys_for_space", "keys_for_spec", "lastconv_key", "parse_key", "pool_key",
    "spec_key_tuple", "stem_key",
]
