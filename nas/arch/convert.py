"""Conversions to and from timm's arch_def (``ir_r1_k5_s2_e3_c40_se0.25_nre``) and
torchvision's ``bneck_conf`` rows, so a found network moves to those libraries; a spec they
cannot express gets a :class:`~nas.arch.spec.SpecError` that says what."""

from __future__ import annotations

import ast
import re
from typing import Any

from nas.arch.spec import DEFAULT_OPTIONS, BlockSpec, NetworkSpec, SpecError, make_divisible


# ---------------------------------------------------------------------------- timm arch_def
def _ratio_string(expansion: int, in_channels: int) -> str:
    """Shortest decimal ratio that timm's make_divisible(in * e) turns back into ``expansion``."""
    for digits in range(0, 5):
        ratio = round(expansion / in_channels, digits)
        if ratio > 0 and make_divisible(in_channels * ratio) == expansion:
            text = f"{ratio:.{digits}f}" if digits else str(int(ratio))
            return text
    raise SpecError(
        f"expansion {expansion} over input {in_channels} has no ratio timm rounds back to it"
    )


def to_timm(spec: NetworkSpec) -> dict[str, Any]:
    """timm ``_gen_mobilenet_v3`` arguments: ``arch_def`` (stages of block strings) and kwargs.

    timm applies one activation (``act_layer``) to the stem and the pooled head, so the
    spec's stem and head activations must agree. Stages start at every stride-2 block.
    """
    spec = spec.resolved()
    if spec.stem_activation != spec.head_activation:
        raise SpecError(
            "timm uses one act_layer for stem and head: stem_activation "
            f"{spec.stem_activation} != head_activation {spec.head_activation}"
        )
    if spec.last_stage != "efficient":
        raise SpecError("timm's MobileNetV3 only has the efficient last stage (last_stage)")
    # timm's MobileNetV3 fixes the SE gate (hard sigmoid) and picks the h-swish kernel itself.
    if spec.se_gate != "hard":
        raise SpecError("timm's MobileNetV3 uses a hard-sigmoid SE gate; se_gate 'soft' cannot "
                        "be written as an arch_def")
    if spec.hswish != "fused":
        raise SpecError("timm's arch_def has no h-swish implementation switch (hswish "
                        "'decomposed'); the function is the same, convert the fused spec")
    se_code = f"_se{spec.se_ratio:g}"
    stages: list[list[str]] = []
    for ctx in spec.contexts():
        b = ctx.block
        if b.expansion == ctx.in_channels:
            code = f"ds_r1_k{b.kernel}_s{b.stride}_e1_c{b.out}"
        else:
            code = f"ir_r1_k{b.kernel}_s{b.stride}_e{_ratio_string(b.expansion, ctx.in_channels)}_c{b.out}"
        if b.dilation != 1:
            raise SpecError(f"bneck row {ctx.index + 1}: timm arch_def strings carry no dilation")
        code += (se_code if b.se else "") + f"_n{b.activation.lower()}"
        # timm's grouping of its canonical nets: a new stage at every stride-2 block and at
        # every change of width (Large's c112, Small's c48), so state_dict keys
        # (blocks.<stage>.<block>) match timm's own mobilenetv3_*_100 models.
        if not stages or b.stride == 2 or b.out != ctx.in_channels:
            stages.append([])
        stages[-1].append(code)
    stages.append([f"cn_r1_k1_s1_c{spec.last_conv}_n{spec.head_activation.lower()}"])
    return {
        "arch_def": stages,
        "stem_size": spec.stem_channels,
        "num_features": spec.head_features,
        "act_layer": _TIMM_ACT_NAME[spec.head_activation],
        "num_classes": spec.num_classes,
        "drop_rate": spec.dropout,
    }


_TIMM_ACT = {"re": "RE", "hs": "HS", "r6": "R6", "sw": "SW"}
_TIMM_ACT_LAYER = {"hard_swish": "HS", "relu": "RE", "relu6": "R6", "swish": "SW"}
_TIMM_ACT_NAME = {v: k for k, v in _TIMM_ACT_LAYER.items()}


def _timm_options(code: str, where: str) -> tuple[str, dict[str, str]]:
    op, *opts = code.split("_")
    options: dict[str, str] = {}
    for opt in opts:
        key = "se" if opt.startswith("se") else opt[0]
        options[key] = opt[len(key):]
    unknown = sorted(set(options) - {"r", "k", "s", "e", "c", "se", "n"})
    if unknown:
        raise SpecError(f"{where}: option(s) {unknown} of {code!r} are not supported")
    return op, options


def from_timm(
    arch_def: list[list[str]],
    *,
    stem_size: int = 16,
    num_features: int = 1280,
    act_layer: str = "hard_swish",
    num_classes: int = 1000,
    drop_rate: float = 0.2,
    resolution: int = 224,
) -> NetworkSpec:
    """Build a spec from timm's MobileNetV3 arch_def (ops ``ds``, ``ir`` and a final ``cn``)."""
    if act_layer not in _TIMM_ACT_LAYER:
        raise SpecError(f"act_layer must be one of {sorted(_TIMM_ACT_LAYER)}, got {act_layer!r}")
    default_act = _TIMM_ACT_LAYER[act_layer]
    blocks: list[BlockSpec] = []
    in_channels = stem_size
    last_conv: int | None = None
    head_act = default_act
    se_ratios: set[float] = set()
    for s, stage in enumerate(arch_def):
        for j, code in enumerate(stage):
            where = f"arch_def stage {s} block {j}"
            op, options = _timm_options(code, where)
            if last_conv is not None:
                raise SpecError(f"{where}: nothing may follow the final 'cn' block")
            act = _TIMM_ACT.get(options.get("n", ""), default_act) if "n" in options else default_act
            if "n" in options and options["n"] not in _TIMM_ACT:
                raise SpecError(f"{where}: activation 'n{options['n']}' not one of {list(_TIMM_ACT)}")
            try:
                kernel, stride, out = int(options["k"]), int(options["s"]), int(options["c"])
                repeats = int(options.get("r", "1"))
            except (KeyError, ValueError) as err:
                raise SpecError(f"{where}: {code!r} needs integer k, s, c options ({err})") from None
            if op == "cn":
                last_conv, head_act = out, act
                continue
            if op not in ("ds", "ir"):
                raise SpecError(f"{where}: op {op!r} not supported; allowed: ds, ir, cn")
            se_ratio = options.get("se")
            if se_ratio is not None:
                try:
                    se_ratios.add(float(se_ratio))
                except ValueError:
                    raise SpecError(f"{where}: se ratio {se_ratio!r} is not a number") from None
                if len(se_ratios) > 1:  # the spec has one network-wide SE ratio
                    raise SpecError(f"{where}: SE ratios differ between blocks "
                                    f"({sorted(se_ratios)}); a spec has one se_ratio")
            for r in range(repeats):
                expansion = in_channels if op == "ds" else make_divisible(in_channels * float(options["e"]))
                blocks.append(
                    BlockSpec(kernel=kernel, expansion=expansion, out=out, se=se_ratio is not None,
                              activation=act, stride=stride if r == 0 else 1)
                )
                in_channels = out
    if last_conv is None:
        raise SpecError("arch_def must end with a 'cn_r1_k1_s1_cN' last-conv block")
    return NetworkSpec(
        blocks=tuple(blocks), stem_channels=stem_size, stem_activation=default_act,
        last_conv=last_conv, head_features=num_features, head_activation=head_act,
        num_classes=num_classes, dropout=drop_rate, resolution=resolution,
        se_ratio=se_ratios.pop() if se_ratios else DEFAULT_OPTIONS.se_ratio,
    )


# ---------------------------------------------------------------------------- torchvision rows
def to_torchvision(spec: NetworkSpec) -> str:
    """A runnable torchvision snippet: imports, ``bneck_conf`` rows, ``last_channel`` and
    ``model = MobileNetV3(...)``.

    torchvision's MobileNetV3 class fixes some things this project lets vary (h-swish stem
    and head, last conv = 6 x last output, efficient last stage); where the spec differs a
    ``# NOTE`` line says so, since the rows alone would then build another network.
    """
    spec = spec.resolved()
    lines = [
        "# torchvision.models.mobilenetv3: MobileNetV3(inverted_residual_setting, last_channel)",
        "# bneck_conf(input_channels, kernel, expanded_channels, out_channels, use_se, activation, stride, dilation)",
        "from functools import partial",
        "",
        "from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3",
        "",
    ]
    notes = []
    if spec.stem_activation != "HS":
        notes.append(f"stem_activation is {spec.stem_activation}, torchvision uses HS")
    if spec.head_activation != "HS":
        notes.append(f"head_activation is {spec.head_activation}, torchvision uses HS")
    if spec.last_conv != 6 * spec.blocks[-1].out:
        notes.append(f"last_conv is {spec.last_conv}, torchvision uses 6 x {spec.blocks[-1].out}")
    if spec.last_stage != "efficient":
        notes.append(f"last_stage is {spec.last_stage}, torchvision's MobileNetV3 has only the "
                     "efficient one")
    # What the rows cannot say at all: torchvision knows RE and HS only, a 1/4 SE with a
    # hard-sigmoid gate, and the fused h-swish.
    for ctx in spec.contexts():
        if ctx.block.activation not in ("RE", "HS"):
            raise SpecError(f"bneck row {ctx.index + 1}: torchvision's InvertedResidualConfig "
                            f"takes activation RE or HS, not {ctx.block.activation}")
    if spec.options != DEFAULT_OPTIONS:
        raise SpecError("torchvision's MobileNetV3 fixes se_ratio 0.25, se_gate 'hard' and the "
                        f"fused h-swish; this spec has {spec.options}")
    lines += [f"# NOTE: {n}" for n in notes]
    lines.append("bneck_conf = partial(InvertedResidualConfig, width_mult=1.0)")
    lines.append("inverted_residual_setting = [")
    for ctx in spec.contexts():
        b = ctx.block
        lines.append(
            f"    bneck_conf({ctx.in_channels}, {b.kernel}, {b.expansion}, {b.out}, {b.se}, "
            f'"{b.activation}", {b.stride}, {b.dilation}),'
        )
    lines.append("]")
    lines.append(f"last_channel = {spec.head_features}")
    lines.append(f"model = MobileNetV3(inverted_residual_setting, last_channel, "
                 f"num_classes={spec.num_classes}, dropout={spec.dropout})")
    return "\n".join(lines) + "\n"


_BNECK_CALL = re.compile(r"bneck_conf\((.*)\)")
_LAST_CHANNEL = re.compile(r"^\s*last_channel\s*=\s*(\d+)\s*$", re.M)


def from_torchvision(text: str, *, num_classes: int = 1000, resolution: int = 224) -> NetworkSpec:
    """Parse ``bneck_conf(...)`` rows and ``last_channel = N`` (as written by :func:`to_torchvision`)."""
    blocks: list[BlockSpec] = []
    previous_out: int | None = None
    stem = None
    calls = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for line in calls:
        match = _BNECK_CALL.search(line)
        if not match or "partial(" in line:
            continue
        where = f"bneck_conf row {len(blocks) + 1}"
        try:
            args = ast.literal_eval(f"({match.group(1)},)")
        except (ValueError, SyntaxError) as err:
            raise SpecError(f"{where}: cannot parse {line.strip()!r}: {err}") from None
        if len(args) != 8:
            raise SpecError(
                f"{where}: expected 8 arguments (input_channels, kernel, expanded_channels, "
                f"out_channels, use_se, activation, stride, dilation), got {len(args)}"
            )
        in_ch, kernel, exp, out, se, act, stride, dilation = args
        if previous_out is None:
            stem = in_ch
        elif in_ch != previous_out:
            raise SpecError(f"{where}: input_channels {in_ch} != previous out_channels {previous_out}")
        try:
            blocks.append(BlockSpec(kernel=kernel, expansion=exp, out=out, se=se,
                                    activation=act, stride=stride, dilation=dilation))
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None
        previous_out = out
    if not blocks:
        raise SpecError("no bneck_conf(...) rows found")
    last = _LAST_CHANNEL.search(text)
    if not last:
        raise SpecError("missing 'last_channel = N' line (the pooled head width)")
    return NetworkSpec(
        blocks=tuple(blocks), stem_channels=stem, last_conv=6 * blocks[-1].out,
        head_features=int(last.group(1)), num_classes=num_classes, resolution=resolution,
    )
