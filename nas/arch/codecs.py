"""Codecs for :class:`~nas.arch.spec.NetworkSpec`: bneck YAML and one-line strings.

* **bneck YAML** reads like the paper's Table 1/2: one flow row per bneck
  ``[k, exp, out, SE, NL, s]`` (an optional 7th entry is the dilation), plus ``stem`` and
  ``head`` mappings. It round-trips exactly.
* **one-line string**: ``stem16_hs|k3_e16_c16_s1_re|...|head960_1280_hs_efficient|...``; each
  block code (``k5_e72_c40_s2_se_re``) is in the spirit of timm's arch_def but keeps the
  expansion absolute. It round-trips exactly.

Every reader raises :class:`~nas.arch.spec.SpecError` naming the file, the row and the field.
(timm and torchvision conversions: :mod:`nas.arch.convert`.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from nas.arch.block_code import format_block, parse_block
from nas.arch.spec import DEFAULT_OPTIONS, BlockSpec, NetworkSpec, SpecError


CANONICAL_DIR = Path(__file__).resolve().parent / "canonical"
CANONICAL_NAMES = {
    "large": "mobilenet_v3_large",
    "small": "mobilenet_v3_small",
    "large_reduced_tail": "mobilenet_v3_large_reduced_tail",
    "small_reduced_tail": "mobilenet_v3_small_reduced_tail",
    "large_minimal": "mobilenet_v3_large_minimal",
    "small_minimal": "mobilenet_v3_small_minimal",
    "v2": "mobilenet_v2",  # MobileNetV2 1.0, the paper's baseline
}

ROW_COLUMNS = ("kernel", "expansion", "out", "se", "activation", "stride", "dilation")
_ACTS = "re|hs|r6|sw"  # nas.arch.spec.ACTIVATIONS, lower case
# The optional ``ops`` mapping: network-wide op settings, written only where they differ from
# the paper's (so every existing bneck YAML and one-line string stays valid and unchanged).
_OPS_KEYS = ("se_ratio", "se_gate", "hswish")
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
        **({"ops": _ops_of(spec)} if spec.options != DEFAULT_OPTIONS else {}),
    }


def _ops_of(spec: NetworkSpec) -> dict[str, Any]:
    return {"se_ratio": float(spec.se_ratio), "se_gate": spec.se_gate, "hswish": spec.hswish}


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
        "kernel, expansion channels, out channels, SE, NL (RE/HS/R6/SW), stride[, dilation]",
        "bneck:",
        "  #  " + ", ".join(h.rjust(widths[i]) for i, h in enumerate(header)),
        *[fmt_row(r) for r in cells],
        "head: {"
        f"last_conv: {spec.last_conv}, features: {spec.head_features}, "
        f"activation: {spec.head_activation}, last_stage: {spec.last_stage}, "
        f"dropout: {spec.dropout!r}}}",
    ]
    if "ops" in data:
        lines.append(f"ops: {{se_ratio: {spec.se_ratio!r}, se_gate: {spec.se_gate}, "
                     f"hswish: {spec.hswish}}}")
    return "\n".join(lines) + "\n"


_TOP_KEYS = {"name", "resolution", "num_classes", "width_mult", "width_convention", "stem", "bneck",
             "head", "ops"}
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
    ops = _ops_of_defaults()
    if "ops" in data:  # any subset of the fields; the rest keep the paper's values
        given = data["ops"]
        if not isinstance(given, dict) or sorted(set(given) - set(_OPS_KEYS)):
            _mapping(given, "ops", _OPS_KEYS, where)  # names what is wrong
        ops.update(given)
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
            se_ratio=ops["se_ratio"],
            se_gate=ops["se_gate"],
            hswish=ops["hswish"],
            name=data.get("name") or "",
        )
    except SpecError as err:
        raise SpecError(f"{where}{err}") from None


def _ops_of_defaults() -> dict[str, Any]:
    return {"se_ratio": DEFAULT_OPTIONS.se_ratio, "se_gate": DEFAULT_OPTIONS.se_gate,
            "hswish": DEFAULT_OPTIONS.hswish}


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
def block_to_string(block: BlockSpec) -> str:
    """``k5_e72_c40_s2_se_re`` (the grammar: :mod:`nas.arch.block_code`)."""
    return format_block(block)


def block_from_string(code: str, index: int = 0) -> BlockSpec:
    """Inverse of :func:`block_to_string`; network-wide op tokens belong in the ``ops`` part."""
    block, options = parse_block(code, f"block {index + 1}")
    if options != DEFAULT_OPTIONS:
        raise SpecError(f"block {index + 1} ({code!r}): the SE ratio, SE gate and h-swish form are "
                        "the network's settings: give them once, in the ops part (ops0.25_hard_fused)")
    return block


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
    if spec.options != DEFAULT_OPTIONS:
        parts.append(f"ops{spec.se_ratio!r}_{spec.se_gate}_{spec.hswish}")
    return "|".join(parts)


_STEM_RE = re.compile(rf"^stem(\d+)_({_ACTS})$")
_HEAD_RE = re.compile(rf"^head(\d+)_(\d+)_({_ACTS})_(efficient|original|mobilenetv2)$")
_OPS_RE = re.compile(r"^ops([0-9.eE+-]+)_(hard|soft)_(fused|decomposed)$")
_TAIL_RES = {
    "dropout": re.compile(r"^drop([0-9.eE+-]+)$"),
    "num_classes": re.compile(r"^cls(\d+)$"),
    "resolution": re.compile(r"^res(\d+)$"),
    "width": re.compile(r"^w([0-9.eE+-]+)_(torchvision|tf_finegrain|tf)$"),
}


def from_string(text: str) -> NetworkSpec:
    """Parse the one-line form written by :func:`to_string`."""
    parts = [p.strip() for p in text.strip().split("|")]
    ops = _ops_of_defaults()
    if parts and parts[-1].startswith("ops"):
        match = _OPS_RE.match(parts.pop())
        if not match:
            raise SpecError(f"part {text.split('|')[-1].strip()!r} must look like "
                            "'ops0.25_hard_fused' (SE ratio, SE gate hard|soft, h-swish "
                            "fused|decomposed)")
        ops = {"se_ratio": float(match.group(1)), "se_gate": match.group(2), "hswish": match.group(3)}
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
        **ops,
    )
