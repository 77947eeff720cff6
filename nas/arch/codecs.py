"""Codecs for :class:`~nas.arch.spec.NetworkSpec`: bneck YAML, one-line strings, timm, torchvision.

* **bneck YAML** reads like the paper's Table 1/2: one flow row per bneck
  ``[k, exp, out, SE, NL, s]`` (an optional 7th entry is the dilation), plus ``stem`` and
  ``head`` mappings. It round-trips exactly.
* **one-line string**: ``stem16_hs|k3_e16_c16_s1_re|...|head960_1280_hs_efficient|...``; each
  block code (``k5_e72_c40_s2_se_re``) is in the spirit of timm's arch_def but keeps the
  expansion absolute. It round-trips exactly.
* **timm arch_def** (``ir_r1_k5_s2_e3_c40_se0.25_nre``) and **torchvision** ``bneck_conf``
  rows, so a found network moves to those libraries.

Every reader raises :class:`~nas.arch.spec.SpecError` naming the file, the row and the field.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml

from nas.arch.spec import ACTIVATIONS, BlockSpec, NetworkSpec, SpecError, make_divisible

CANONICAL_DIR = Path(__file__).resolve().parent / "canonical"
CANONICAL_NAMES = {
    "large": "mobilenet_v3_large",
    "small": "mobilenet_v3_small",
    "large_reduced_tail": "mobilenet_v3_large_reduced_tail",
    "small_reduced_tail": "mobilenet_v3_small_reduced_tail",
    "large_minimal": "mobilenet_v3_large_minimal",
    "small_minimal": "mobilenet_v3_small_minimal",
}

ROW_COLUMNS = ("kernel", "expansion", "out", "se", "activation", "stride", "dilation")
_SE_WORDS = {"SE": True, "-": False, True: True, False: False}


# ---------------------------------------------------------------------------- bneck YAML
def spec_to_dict(spec: NetworkSpec) -> dict[str, Any]:
    """The YAML document's data (rows as lists, in the paper's column order)."""
    rows = []
    for b in spec.blocks:
        row: list[Any] = [b.kernel, b.expansion, b.out, "SE" if b.se else "-", b.activation, b.stride]
        if b.dilation != 1:
            row.append(b.dilation)
        rows.append(row)
    return {
        "name": spec.name,
        "resolution": spec.resolution,
        "num_classes": spec.num_classes,
        "width_mult": spec.width_mult,
        "width_convention": spec.width_convention,
        "stem": {"channels": spec.stem_channels, "activation": spec.stem_activation},
        "bneck": rows,
        "head": {
            "last_conv": spec.last_conv,
            "features": spec.head_features,
            "activation": spec.head_activation,
            "last_stage": spec.last_stage,
            "dropout": spec.dropout,
        },
    }


def to_yaml(spec: NetworkSpec) -> str:
    """The bneck YAML text: a table with aligned rows, one per bneck."""
    data = spec_to_dict(spec)
    cells = [[str(v) for v in row] for row in data["bneck"]]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(map(len, cells)))]

    def fmt_row(row: list[str]) -> str:
        return "  - [" + ", ".join(c.rjust(widths[i]) for i, c in enumerate(row)) + "]"

    header = ["k", "exp", "out", "SE", "NL", "s", "d"][: len(widths)]
    lines = [
        yaml.safe_dump({"name": data["name"]}).strip(),
        f"resolution: {data['resolution']}",
        f"num_classes: {data['num_classes']}",
        f"width_mult: {data['width_mult']!r}",
        f"width_convention: {data['width_convention']}",
        f"stem: {{channels: {spec.stem_channels}, activation: {spec.stem_activation}}}",
        "# one row per bneck, as in the paper's Table 1/2: "
        "kernel, expansion channels, out channels, SE, NL (RE/HS), stride[, dilation]",
        "bneck:",
        "  #  " + ", ".join(h.rjust(widths[i]) for i, h in enumerate(header)),
        *[fmt_row(r) for r in cells],
        "head: {"
        f"last_conv: {spec.last_conv}, features: {spec.head_features}, "
        f"activation: {spec.head_activation}, last_stage: {spec.last_stage}, "
        f"dropout: {spec.dropout!r}}}",
    ]
    return "\n".join(lines) + "\n"


_TOP_KEYS = {"name", "resolution", "num_classes", "width_mult", "width_convention", "stem", "bneck", "head"}
_REQUIRED_TOP = ("resolution", "num_classes", "stem", "bneck", "head")
_STEM_KEYS = ("channels", "activation")
_HEAD_KEYS = ("last_conv", "features", "activation", "last_stage", "dropout")


def _mapping(data: object, what: str, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(data, dict):
        raise SpecError(f"{where}'{what}' must be a mapping with keys {list(keys)}, got {data!r}")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise SpecError(f"{where}'{what}' has unknown field(s) {unknown}; allowed: {list(keys)}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise SpecError(f"{where}'{what}' is missing field(s) {missing}")
    return data


def row_to_block(row: object, index: int, where: str = "") -> BlockSpec:
    """Decode one table row ``[k, exp, out, SE, NL, s(, d)]`` (``index`` is 0-based)."""
    label = f"{where}bneck row {index + 1}"
    if not isinstance(row, (list, tuple)) or len(row) not in (6, 7):
        n = len(row) if isinstance(row, (list, tuple)) else "not a list"
        raise SpecError(
            f"{label}: expected 6 or 7 entries [kernel, exp, out, SE, NL, stride(, dilation)], "
            f"got {n}: {row!r}"
        )
    values = dict(zip(ROW_COLUMNS, row))
    se = values["se"]
    if se not in _SE_WORDS or isinstance(se, (int, float)) and not isinstance(se, bool):
        raise SpecError(f"{label}: field 'se' must be SE, -, true or false, got {se!r}")
    values["se"] = _SE_WORDS[se]
    try:
        return BlockSpec(**values)
    except SpecError as err:
        raise SpecError(f"{label}: {err}") from None


def spec_from_dict(data: object, where: str = "") -> NetworkSpec:
    """Decode the YAML document's data; ``where`` prefixes every error (e.g. the file)."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}the document must be a mapping with keys {sorted(_TOP_KEYS)}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SpecError(f"{where}unknown field(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    missing = [k for k in _REQUIRED_TOP if k not in data]
    if missing:
        raise SpecError(f"{where}missing field(s) {missing}")
    stem = _mapping(data["stem"], "stem", _STEM_KEYS, where)
    head = _mapping(data["head"], "head", _HEAD_KEYS, where)
    rows = data["bneck"]
    if not isinstance(rows, list) or not rows:
        raise SpecError(f"{where}field 'bneck' must be a non-empty list of rows")
    blocks = tuple(row_to_block(row, i, where) for i, row in enumerate(rows))
    try:
        return NetworkSpec(
            blocks=blocks,
            stem_channels=stem["channels"],
            stem_activation=stem["activation"],
            last_conv=head["last_conv"],
            head_features=head["features"],
            head_activation=head["activation"],
            last_stage=head["last_stage"],
            dropout=head["dropout"],
            num_classes=data["num_classes"],
            resolution=data["resolution"],
            width_mult=data.get("width_mult", 1.0),
            width_convention=data.get("width_convention", "torchvision"),
            name=data.get("name") or "",
        )
    except SpecError as err:
        raise SpecError(f"{where}{err}") from None


def from_yaml(text: str, source: str = "<string>") -> NetworkSpec:
    """Parse bneck YAML text; errors name ``source``."""
    where = f"{source}: "
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{where}{yaml_error_summary(err)}") from None
    return spec_from_dict(data, where)


def yaml_error_summary(err: yaml.YAMLError) -> str:
    """One line for a YAML parse error: where, and what the parser expected."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{at}: {problem}"


def load_spec(name_or_path: str | Path) -> NetworkSpec:
    """A canonical network by name (``large``, ``small``, ...) or a bneck YAML file."""
    key = str(name_or_path)
    if key in CANONICAL_NAMES or key in CANONICAL_NAMES.values():
        stem = CANONICAL_NAMES.get(key, key)
        path = CANONICAL_DIR / f"{stem}.yaml"
        return from_yaml(path.read_text(), str(path))
    path = Path(name_or_path)
    if not path.is_file():
        raise SpecError(
            f"{key}: no such file, and not a canonical name (one of {sorted(CANONICAL_NAMES)})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not a bneck YAML file (not UTF-8 text: byte {err.start} "
                        f"cannot be decoded)") from None
    return from_yaml(text, str(path))


def save_spec(spec: NetworkSpec, path: str | Path) -> Path:
    """Write ``spec`` as bneck YAML; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(spec))
    return path


# ---------------------------------------------------------------------------- one-line string
_BLOCK_RE = re.compile(
    r"^k(?P<k>\d+)_e(?P<e>\d+)_c(?P<c>\d+)_s(?P<s>\d+)(?P<se>_se)?_(?P<act>re|hs)(?:_d(?P<d>\d+))?$"
)


def block_to_string(block: BlockSpec) -> str:
    """``k5_e72_c40_s2_se_re``; a trailing ``_d2`` marks dilation."""
    code = f"k{block.kernel}_e{block.expansion}_c{block.out}_s{block.stride}"
    code += ("_se" if block.se else "") + f"_{block.activation.lower()}"
    return code + (f"_d{block.dilation}" if block.dilation != 1 else "")


def block_from_string(code: str, index: int = 0) -> BlockSpec:
    """Inverse of :func:`block_to_string`."""
    match = _BLOCK_RE.match(code.strip())
    if not match:
        raise SpecError(
            f"block {index + 1}: cannot parse {code!r}; expected like 'k5_e72_c40_s2_se_re' "
            "(kernel, expansion, out channels, stride, optional _se, re|hs, optional _d2)"
        )
    g = match.groupdict()
    try:
        return BlockSpec(
            kernel=int(g["k"]), expansion=int(g["e"]), out=int(g["c"]), se=bool(g["se"]),
            activation=g["act"].upper(), stride=int(g["s"]), dilation=int(g["d"] or 1),
        )
    except SpecError as err:
        raise SpecError(f"block {index + 1} ({code!r}): {err}") from None


def to_string(spec: NetworkSpec) -> str:
    """The compact one-line form of the whole network (round-trips with :func:`from_string`)."""
    parts = [f"stem{spec.stem_channels}_{spec.stem_activation.lower()}"]
    parts += [block_to_string(b) for b in spec.blocks]
    parts += [
        f"head{spec.last_conv}_{spec.head_features}_{spec.head_activation.lower()}_{spec.last_stage}",
        f"drop{spec.dropout!r}",
        f"cls{spec.num_classes}",
        f"res{spec.resolution}",
        f"w{spec.width_mult!r}_{spec.width_convention}",
    ]
    return "|".join(parts)


_STEM_RE = re.compile(r"^stem(\d+)_(re|hs)$")
_HEAD_RE = re.compile(r"^head(\d+)_(\d+)_(re|hs)_(efficient|original)$")
_TAIL_RES = {
    "dropout": re.compile(r"^drop([0-9.eE+-]+)$"),
    "num_classes": re.compile(r"^cls(\d+)$"),
    "resolution": re.compile(r"^res(\d+)$"),
    "width": re.compile(r"^w([0-9.eE+-]+)_(torchvision|tf)$"),
}


def from_string(text: str) -> NetworkSpec:
    """Parse the one-line form written by :func:`to_string`."""
    parts = [p.strip() for p in text.strip().split("|")]
    if len(parts) < 7:
        raise SpecError(
            f"one-line spec needs stem|blocks...|head|drop|cls|res|w parts, got {len(parts)}: {text!r}"
        )
    stem = _STEM_RE.match(parts[0])
    if not stem:
        raise SpecError(f"stem part {parts[0]!r} must look like 'stem16_hs'")
    head = _HEAD_RE.match(parts[-5])
    if not head:
        raise SpecError(f"head part {parts[-5]!r} must look like 'head960_1280_hs_efficient'")
    tail = {}
    for (key, pattern), part in zip(_TAIL_RES.items(), parts[-4:]):
        match = pattern.match(part)
        if not match:
            raise SpecError(f"part {part!r} must match {pattern.pattern} ({key})")
        tail[key] = match.groups()
    blocks = tuple(block_from_string(code, i) for i, code in enumerate(parts[1:-5]))
    return NetworkSpec(
        blocks=blocks,
        stem_channels=int(stem.group(1)),
        stem_activation=stem.group(2).upper(),
        last_conv=int(head.group(1)),
        head_features=int(head.group(2)),
        head_activation=head.group(3).upper(),
        last_stage=head.group(4),
        dropout=float(tail["dropout"][0]),
        num_classes=int(tail["num_classes"][0]),
        resolution=int(tail["resolution"][0]),
        width_mult=float(tail["width"][0]),
        width_convention=tail["width"][1],
    )


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
    stages: list[list[str]] = []
    for ctx in spec.contexts():
        b = ctx.block
        if b.expansion == ctx.in_channels:
            code = f"ds_r1_k{b.kernel}_s{b.stride}_e1_c{b.out}"
        else:
            code = f"ir_r1_k{b.kernel}_s{b.stride}_e{_ratio_string(b.expansion, ctx.in_channels)}_c{b.out}"
        if b.dilation != 1:
            raise SpecError(f"bneck row {ctx.index + 1}: timm arch_def strings carry no dilation")
        code += ("_se0.25" if b.se else "") + f"_n{b.activation.lower()}"
        if not stages or b.stride == 2:
            stages.append([])
        stages[-1].append(code)
    stages.append([f"cn_r1_k1_s1_c{spec.last_conv}_n{spec.head_activation.lower()}"])
    return {
        "arch_def": stages,
        "stem_size": spec.stem_channels,
        "num_features": spec.head_features,
        "act_layer": {"HS": "hard_swish", "RE": "relu"}[spec.head_activation],
        "num_classes": spec.num_classes,
        "drop_rate": spec.dropout,
    }


_TIMM_ACT = {"re": "RE", "hs": "HS"}
_TIMM_ACT_LAYER = {"hard_swish": "HS", "relu": "RE"}


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
            if se_ratio not in (None, "0.25"):
                raise SpecError(f"{where}: only se0.25 is supported, got se{se_ratio}")
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
    )


# ---------------------------------------------------------------------------- torchvision rows
def to_torchvision(spec: NetworkSpec) -> str:
    """torchvision ``bneck_conf`` rows plus ``last_channel``, for ``MobileNetV3(...)``.

    torchvision's MobileNetV3 class fixes some things this project lets vary (h-swish stem
    and head, last conv = 6 x last output, efficient last stage); where the spec differs a
    ``# NOTE`` line says so, since the rows alone would then build another network.
    """
    spec = spec.resolved()
    lines = [
        "# torchvision.models.mobilenetv3: MobileNetV3(inverted_residual_setting, last_channel)",
        "# bneck_conf(input_channels, kernel, expanded_channels, out_channels, use_se, activation, stride, dilation)",
    ]
    notes = []
    if spec.stem_activation != "HS":
        notes.append(f"stem_activation is {spec.stem_activation}, torchvision uses HS")
    if spec.head_activation != "HS":
        notes.append(f"head_activation is {spec.head_activation}, torchvision uses HS")
    if spec.last_conv != 6 * spec.blocks[-1].out:
        notes.append(f"last_conv is {spec.last_conv}, torchvision uses 6 x {spec.blocks[-1].out}")
    if spec.last_stage != "efficient":
        notes.append("last_stage is original, torchvision has only the efficient one")
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


__all__ = [
    "ACTIVATIONS", "CANONICAL_NAMES", "block_from_string", "block_to_string", "from_string",
    "from_timm", "from_torchvision", "from_yaml", "load_spec", "save_spec", "spec_from_dict",
    "spec_to_dict", "to_string", "to_timm", "to_torchvision", "to_yaml", "row_to_block",
]
